"""Ingest: every door (STOW-RS, C-STORE, uploads, bucket imports) through one pipeline that checks,
stores and indexes an instance, and the jobs that track uploads and imports."""
