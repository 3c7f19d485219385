"""The consistency check (``manage.py reconcile``, a daily beat job, the API and a staff page):
for each organization, meter and tier, the bytes the index names, the ledger's balance and the
objects the stores hold agree, or every difference is named. See ``archive.reconcile.services``."""
