"""Retention: the trash (with a grace period), the purge that follows it, and legal holds.

A study deleted by a retention rule (or by hand) goes to the trash first: it disappears from
searches and reads, and can be taken back out until ``purge_after``. Past that date the beat job
``trash_purge_due`` deletes it for good: every object's bytes first (primary copy and replicas),
then, in one transaction per batch, the index rows with their ledger deltas (``-size`` per tier)
and the early-deletion charge of a tier left before its minimum storage duration.

A legal hold keeps a study whatever the policy says: a held study cannot be trashed, and a held
study that is already in the trash stays there but is never purged until the hold is lifted.

Rooms: ``services`` (writes: trash, untrash, purge, set and lift a hold), ``selectors`` (reads:
the trash and the holds), ``tasks`` (the purge beat job, name ``archive.tasks.trash_purge_due``
unchanged), ``apis`` (REST), ``views`` (the portal pages). Other archive packages use only
``services`` and ``selectors``.
"""
