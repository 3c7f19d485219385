"""The documentation's examples, run against a live Strata with the demo data."""
