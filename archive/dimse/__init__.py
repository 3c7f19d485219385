"""DIMSE: the DICOM C-STORE / C-ECHO listener that every organization shares on one port.

- ``listener``: the SCP (``StrataSCP``): admits an association by its called AE title, calling
  AE title and address (``archive.ae_titles.selectors.ae_admit``), receives each data set to disk
  in constant memory, checks it and acknowledges it once it is durable (the C-STORE statuses are
  listed there).
- ``indexer``: stores and indexes the acknowledged objects through the one ingest pipeline, in a
  thread of the listener or in a process of its own (``indexer_process``, the spawn target,
  which must import no models at module level).

``manage.py run_scp`` (``archive/management/commands/run_scp.py``) runs the listener. The called
AE titles and who may call them are configuration, in ``archive.ae_titles``.
"""
