"""The ``request_id`` of a recommendation list: what made it, signed, so any replica can read it.

A list's impressions and clicks come back later, on any worker of any replica, carrying only
the list's ``request_id``. Rather than write every served list to the database on the hot path
(and make every impression wait for that write), the id itself says what made the list: the
model version, the recipe, the experiment and arm, and each position's source. It is signed
with a key derived from the installation's key (``erasure_keys``, the same on every replica),
over the user id too, so a frontend bug or a forged id cannot credit a list to the wrong
version, arm or user.

Form: ``<id>.<payload>.<signature>``; ``<id>`` is 96 random bits in hex: the request's own id
(the ``X-Request-ID`` the middleware made and the access log carries) and 32 bits more, or a
fresh one when the client sent its own (a page may reuse it for several lists); ``<payload>``
URL-safe base64 of the fields joined by ``\\x1f``; ``<signature>`` the first 12 bytes of an
HMAC-SHA256, URL-safe base64. About 110 characters for a list of ten.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

FORMAT = "1"
SEP = "\x1f"
SIGNATURE_BYTES = 12
MAX_LENGTH = 512
# one letter per position of the list
SOURCE_LETTERS = {"model": "m", "session": "s", "popular": "p", "new_arrivals": "n"}
LETTER_SOURCES = {letter: source for source, letter in SOURCE_LETTERS.items()}
DOMAIN = b"recoffer recommendation list id v1"


class InvalidListId(ValueError):
    """A ``request_id`` that is not a recommendation list's, or not signed by this service."""


@dataclass(frozen=True, slots=True)
class ServedList:
    """What made one recommendation list (read back from its ``request_id``)."""

    request_id: str  # the id part: the request's X-Request-ID
    model_version: str | None  # None: answered from the event log (no model yet)
    recipe: str  # "all", "novel", or the name of a candidate recipe served by an experiment
    sources: tuple[str, ...]  # each position's source: model, session, popular, new_arrivals
    served_at: datetime
    experiment_id: str | None = None
    arm: str | None = None  # "control" or "candidate"

    def source_at(self, position: int) -> str | None:
        """The source of ``position`` (0-based), None past the end of the list."""
        return self.sources[position] if 0 <= position < len(self.sources) else None


class ListIds:
    """Issues and reads signed list ids under a key that is known once the database is.

    ``key`` is called on every use (the installation key arrives with the first contact with
    the database, ``service.privacy``); until it returns one, ``issue`` gives back the plain
    request id (no feedback can be credited to such a list) and ``read`` refuses every id.
    """

    def __init__(self, key: Callable[[], bytes | None]) -> None:
        self._key = key
        self._derived_from: bytes | None = None
        self._mac: hmac.HMAC | None = None

    def _keyed(self) -> hmac.HMAC | None:
        installation = self._key()
        if installation is None:
            return None
        if installation != self._derived_from:
            derived = hmac.digest(installation, DOMAIN, "sha256")
            self._mac = hmac.new(derived, digestmod=hashlib.sha256)
            self._derived_from = installation
        return self._mac

    def issue(self, request_id: str, user_id: str, served: ServedList) -> str:
        """The list id of ``served`` for ``user_id`` (``request_id`` alone without a key)."""
        mac = self._keyed()
        if mac is None:
            return request_id
        fields = (
            FORMAT,
            served.model_version or "",
            served.recipe,
            "".join(SOURCE_LETTERS.get(s, "p") for s in served.sources),
            served.experiment_id or "",
            served.arm or "",
            str(int(served.served_at.timestamp())),
        )
        body = SEP.join(fields).encode()
        payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        return f"{request_id}.{payload}.{_sign(mac, request_id, payload, user_id)}"

    def read(self, list_id: str, user_id: str) -> ServedList:
        """What made the list ``list_id`` shown to ``user_id``; InvalidListId when unsigned,
        altered, another user's, or not a list id at all."""
        if len(list_id) > MAX_LENGTH:
            raise InvalidListId("not a recommendation list's request_id (too long)")
        parts = list_id.rsplit(".", 2)
        if len(parts) != 3 or not all(parts):
            raise InvalidListId(
                "not a recommendation list's request_id: send the request_id of the "
                "recommendations response, unchanged"
            )
        request_id, payload, signature = parts
        mac = self._keyed()
        if mac is None:
            raise InvalidListId("list ids cannot be checked yet: the database was not reached")
        expected = _sign(mac, request_id, payload, user_id)
        if not hmac.compare_digest(expected, signature):
            raise InvalidListId(
                "request_id is not signed by this service for this user_id (altered, "
                "another user's, or from another installation)"
            )
        try:
            body = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
            fmt, version, recipe, letters, experiment, arm, served = body.split(SEP)
            served_at = datetime.fromtimestamp(int(served), UTC)
        except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, OSError):
            raise InvalidListId("request_id's payload cannot be read") from None
        if fmt != FORMAT:
            raise InvalidListId(f"request_id of format {fmt!r}, this build reads {FORMAT!r}")
        return ServedList(
            request_id=request_id,
            model_version=version or None,
            recipe=recipe,
            sources=tuple(LETTER_SOURCES.get(c, "popular") for c in letters),
            served_at=served_at,
            experiment_id=experiment or None,
            arm=arm or None,
        )


def _sign(mac: hmac.HMAC, request_id: str, payload: str, user_id: str) -> str:
    keyed = mac.copy()
    keyed.update(SEP.join((request_id, payload, user_id)).encode())
    return base64.urlsafe_b64encode(keyed.digest()[:SIGNATURE_BYTES]).decode()


def sources_of(items: Sequence[object]) -> tuple[str, ...]:
    """Each item's ``source`` attribute, in order (the recommender's ``Recommendation``)."""
    return tuple(str(getattr(item, "source", "popular")) for item in items)
