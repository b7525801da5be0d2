"""Erased users as keyed hashes, and the in-memory set every worker checks per request."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterable

HASH_LENGTH = 64  # hex of HMAC-SHA256


def user_hash(key: bytes, user_id: str) -> str:
    """HMAC-SHA256 of the user id under the installation's key, in hex."""
    return hmac.digest(key, user_id.encode(), "sha256").hex()


class _Hasher:
    """``user_hash`` under one key, keyed once: each call copies the keyed HMAC object (the
    standard library's ``HMAC.copy``) instead of setting a new one up (slow with OpenSSL 3)."""

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod="sha256")

    def __call__(self, user_id: str) -> str:
        mac = self._keyed.copy()
        mac.update(user_id.encode())
        return mac.hexdigest()


class Tombstones:
    """The erased users this worker knows of: a set of hashes, checked in one lookup.

    Until the key is known (the database was never reached) nothing can be checked and no id
    counts as erased; ``service.privacy.service.Privacy.refresh`` loads both.
    """

    def __init__(self, key: bytes | None = None, hashes: Iterable[str] = ()) -> None:
        self._key: bytes | None = None
        self._hasher: _Hasher | None = None
        self.key = key
        self._hashes: set[str] = set(hashes)
        self._lock = threading.Lock()
        self.watermark = 0  # the highest tombstone row id read

    @property
    def key(self) -> bytes | None:
        return self._key

    @key.setter
    def key(self, key: bytes | None) -> None:
        if key != self._key:
            self._hasher = None if key is None else _Hasher(key)
            self._key = key

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, hashed: object) -> bool:
        return hashed in self._hashes

    def hash(self, user_id: str) -> str | None:
        return None if self._hasher is None else self._hasher(user_id)

    def is_erased(self, user_id: str) -> bool:
        """Whether ``user_id`` was erased (no hashing at all while nobody was)."""
        hasher = self._hasher
        if not self._hashes or hasher is None:
            return False
        return hasher(user_id) in self._hashes

    def add(self, hashes: Iterable[str]) -> set[str]:
        """Remember ``hashes``; returns those that were new."""
        with self._lock:
            new = set(hashes) - self._hashes
            self._hashes |= new
        return new
