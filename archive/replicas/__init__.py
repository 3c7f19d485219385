"""The disaster-recovery replica: every instance copied to a second location, verified, billed.

An organization has at most one location with role ``replica``. Replication runs in three steps
(``services``):

- ``replicas_sync`` finds, in SQL, instances without a replica row for that location and inserts
  pending rows (one ``INSERT ... SELECT``, bounded by ``limit``).
- ``replicas_dispatch`` reserves a bounded batch of pending rows and hands them to the workers.
- ``replica_copy`` claims a row with a conditional UPDATE (a lease in ``claimed_until``), streams
  the object from the primary into the replica store's spool while hashing it (constant memory),
  stores it in the replica tier, verifies it (HEAD size, the SHA-256 the store recorded, and the
  streamed SHA-256 against the index), and marks the row done in the same transaction that writes
  the storage-ledger delta (replica bytes are stored bytes and are billed).

Rules that must stay true:

- A row is ``done`` only once the replica object's bytes were verified against ``Instance.sha256``.
- The ledger delta of a replica has the key ``replica:<row id>``: a row copied twice (a lease that
  ran out, a drill that sent it back to pending) is billed once.
- Only the holder of the current lease finishes a row; a worker whose lease was taken over
  writes nothing to the index.
- A failure is retried (``MAX_ATTEMPTS``) and then reported as ``failed`` with the reason. An
  archive-tier primary that is not restored cannot be read: that row fails at once with that
  reason (replication normally happens long before a policy moves data to the archive tier).

``drill.replica_drill`` reads a random sample back from the replica and recomputes the checksums
(``manage.py dr_drill``, the API and the storage page run it).

Rooms: ``services`` (writes), ``selectors`` (reads), ``drill``, ``tasks`` (the Celery tasks),
``apis`` (REST), ``views`` (the portal action; the panel is ``archive.templatetags.replicas``).
Other archive packages use only ``services`` and ``selectors``.
"""
