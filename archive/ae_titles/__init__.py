"""AE titles: the called AE titles an organization owns on the DICOM listener and who may call
them. Configuration that the listener (``archive.dimse``) reads and the Ingest page shows."""
