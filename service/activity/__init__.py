"""The shop's behaviour: events, users and items as stored, each worker's recent view of them,
and ingesting what the shop sends (``repository``, ``store``, ``ingest``; types in ``records``)."""
