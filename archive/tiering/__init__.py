"""Tiering: the planner that turns the active archive policy into tier moves and trashes studies past
their retention (``planning``), the tier moves themselves (``moves``), their tasks, and the API and
portal page of policies and moves. The rule engine is ``archive.policies`` and the tier catalog
``archive.storage.tiers``: the simulator (``archive.analytics``) uses both, and the policy page
shows the simulator, so they sit below this package."""
