"""recoffer online service: artifact contract, scoring and (later) the HTTP API."""
