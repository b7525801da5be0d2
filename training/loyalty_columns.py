"""The columnar loyalty metrics, now :mod:`service.analytics.columns` (the API runs them too)."""

from service.analytics.columns import Encoded, cohorts, encode, frame_of, loyalty

__all__ = ["Encoded", "cohorts", "encode", "frame_of", "loyalty"]
