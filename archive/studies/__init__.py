"""What the portal and the REST API show of the index: the study search, a study's page (series,
tiers, restores, legal holds, who read it), its zip download, and the studies/series/instances API.
It composes the index with restores and retention, so it sits above them."""
