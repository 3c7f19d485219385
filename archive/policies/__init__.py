"""Archive policies: rules that move instances between tiers as they age and stop being read,
and send studies to the trash once their retention has passed.

- ``validate``: the rule language and its validation (``rules_validate``).
- ``sql``: the rules compiled to one SQL selection over the index (planning, preview).
- ``python``: the same rules evaluated in Python on the simulator's inventory buckets; a
  parametrized test proves both engines select the same instances for every condition kind.
- ``versions``: saved versions, the active one, activation (audited).
- ``preview``: what a set of rules would move and trash today, and the change on the bill.
"""
