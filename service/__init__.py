"""recoffer's online service: the HTTP API, recommendations, offers, and the model contract.

Map: docs/architecture.md. Entry point: ``python -m service``. Nothing here imports
``training``.
"""
