"""Exceptions shared by the trainer and the service."""


class RecofferError(Exception):
    """Base class of every error recoffer raises on purpose."""


class ArtifactError(RecofferError):
    """A model artifact is missing, truncated, corrupt or of an unknown schema."""


class RegistryError(RecofferError):
    """The model registry cannot do what was asked (no such version, nothing to roll back)."""
