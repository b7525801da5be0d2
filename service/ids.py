"""The shop's ids as the service accepts them: one alphabet for every user, item, order and event.

An id is 1 to 128 of the characters ``A-Z a-z 0-9 . _ : @ -`` (case-sensitive), and is not
``.`` or ``..``. Every such id travels unescaped in a URL path or query string and comes back
the same, so whatever ``POST /v1/events`` accepts can be asked for by
``GET /v1/users/{user_id}/recommendations``. Left out on purpose: ``/`` (splits a path), ``?``,
``#``, ``%`` and ``&`` (end or escape a URL part), ``+`` (a space in a query string), blanks
and control characters. Numeric ids (``17850``), stock codes (``85123A``), slugs
(``u-0042``), namespaced ids (``shop:42``) and plain e-mail addresses (``jane.doe@example.com``)
fit. The trainer refuses files whose ids do not (``training.data.formats``).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, StringConstraints
from pydantic_core import PydanticCustomError

ID_CHARACTERS = "A-Z a-z 0-9 . _ : @ -"
ID_MAX_LENGTH = 128
# the JSON-schema pattern published in the OpenAPI document: the alphabet, except "." and ".."
# (three branches, as the schema's regex dialect has no look-ahead: a first character that is no
# dot; one dot and then no dot; two dots and then anything)
ID_PATTERN = (
    r"^(?:[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*"
    r"|\.[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*"
    r"|\.\.[A-Za-z0-9._:@-]+)$"
)
_OUTSIDE = re.compile(r"[^A-Za-z0-9._:@-]")
_DOT_SEGMENTS = (".", "..")


def id_problem(value: str) -> str | None:
    """Why ``value`` is not an id (one short sentence naming the first bad character), or None."""
    if not value:
        return "an id must not be empty"
    bad = _OUTSIDE.search(value)
    if bad is not None:
        return (
            f"character {bad.group()!r} (position {bad.start() + 1}) is not allowed in an id; "
            f"ids use {ID_CHARACTERS}"
        )
    if len(value) > ID_MAX_LENGTH:
        return f"an id has at most {ID_MAX_LENGTH} characters, not {len(value)}"
    if value in _DOT_SEGMENTS:
        return f"{value!r} is not an id (a URL reads it as a path step)"
    return None


def is_id(value: str) -> bool:
    """Whether ``value`` is in the id alphabet and length."""
    return id_problem(value) is None


def _checked(value: object) -> object:
    # before pydantic's own checks, so that the message names the character; a value that is
    # not a string goes on to the str schema, which refuses it in its usual words
    if isinstance(value, str):
        problem = id_problem(value)
        if problem is not None:
            raise PydanticCustomError("id_alphabet", problem)
    return value


_ID = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN),
    BeforeValidator(_checked),
]

# One alphabet, named by what each id identifies (the OpenAPI document shows the pattern).
ShopId = _ID
UserId = _ID
ItemId = _ID
OrderId = _ID
EventId = _ID
