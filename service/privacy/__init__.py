"""Erasure and export of one user's data (GDPR), and the tombstones that keep an erased id
unserved by every worker, every model version and the next training run."""

from service.privacy.policy import POLICIES, Policy, user_columns
from service.privacy.tombstones import Tombstones, user_hash

__all__ = ["POLICIES", "Policy", "Tombstones", "user_columns", "user_hash"]
