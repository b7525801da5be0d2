"""User segments (issue 12, item 1): RFM figures and scores, lifecycle stage, loyalty type.

``rules`` (plain Python: the definitions and thresholds), ``repository`` (the SQL: per-user
aggregates, batched upserts, runs, counts), ``service`` (the bulk run, one user's refresh and
profile, the background refresh on ingest).
"""
