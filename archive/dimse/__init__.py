"""DIMSE: the DICOM C-STORE / C-ECHO listener that every organization shares on one port, and
the called AE titles by which it knows which organization an association belongs to.

- ``listener``: the SCP (``StrataSCP``): admits an association by its called AE title, calling
  AE title and address, receives each data set to disk in constant memory, checks it and
  acknowledges it once it is durable (the C-STORE statuses are listed there).
- ``indexer``: stores and indexes the acknowledged objects through the one ingest pipeline, in a
  thread of the listener or in a process of its own (``indexer_process``, the spawn target,
  which must import no models at module level).
- ``services`` (writes): add, change and delete an organization's called AE titles, with the
  rules on who may call them (audited).
- ``selectors`` (reads): an organization's AE titles, and ``ae_admit``, the listener's check.

``manage.py run_scp`` (``archive/management/commands/run_scp.py``) runs the listener. The REST
API and the portal pages of the AE titles are in ``archive.apis`` and ``archive.views``.
Other archive packages use only ``services`` and ``selectors``.
"""
