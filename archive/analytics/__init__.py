"""Access analytics and the cost simulator: how much of an organization's images is read again and
how long after (``curve``), what its archive will cost under each policy (``simulator``), their
charts (``charts``), the REST API (``apis``) and the portal page (``views``)."""
