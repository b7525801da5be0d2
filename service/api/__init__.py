"""HTTP API: one router per resource, shared dependencies, one error map."""
