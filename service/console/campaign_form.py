"""The campaign form of the console: which fields a kind shows, and a posted form read back
into the fields the API would be sent.

Nothing here validates a campaign: the fields are read from ``Campaign`` itself (its types,
defaults, descriptions and ``KIND_FIELDS``), and what the form says is handed to
``Campaign.model_validate`` / ``CampaignStore`` exactly as the API hands its JSON, so the rules
live in one place. A text box left empty sends nothing (the default on creation, the value as
it is on an edit); ``none`` clears a field that may be empty (no cap, no end).
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from starlette.datastructures import FormData

from service.errors import InvalidInput
from service.offers.audience import SEGMENTS
from service.offers.campaigns import (
    CAMPAIGN_KINDS,
    KIND_FIELDS,
    KIND_NAMES,
    KIND_SPECIFIC,
    Campaign,
    CampaignKind,
)
from service.offers.store import invalid_fields

NONE_WORD = "none"  # typed into a field that may be empty: no value (null in the API)
Widget = Literal["text", "number", "choice", "flag", "segments", "list", "moment"]
# fields the form does not show: the id and the kind are chosen first, enabled is what pause
# and resume are for
HIDDEN = frozenset(("campaign_id", "kind", "enabled"))


@dataclass(frozen=True)
class FormField:
    """One field of the form, described from ``Campaign``."""

    name: str
    widget: Widget
    description: str
    default: str  # as the form shows it ("" when there is none)
    nullable: bool
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether None was allowed."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def _base(annotation: Any) -> Any:
    """``Annotated[X, ...]`` -> X."""
    while get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):
        annotation = get_args(annotation)[0]
    return annotation


def shown(value: Any) -> str:
    """A definition's value as a form shows it."""
    if value is None:
        return NONE_WORD
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(name: str) -> FormField:
    info = Campaign.model_fields[name]
    annotation, nullable = _unwrap(info.annotation)
    annotation = _base(annotation)
    widget: Widget = "text"
    choices: tuple[str, ...] = ()
    if annotation is bool:
        widget = "flag"
    elif get_origin(annotation) is Literal:
        widget, choices = "choice", tuple(str(a) for a in get_args(annotation))
    elif name in ("audience", "exclude_segments"):
        widget, choices = "segments", tuple(SEGMENTS)
    elif get_origin(annotation) is tuple:
        widget = "list"
    elif annotation is datetime or "datetime" in str(annotation).lower():
        widget = "moment"
    elif annotation in (int, float, Decimal) or "Decimal" in str(annotation):
        widget = "number"
    default = info.default
    text = "" if default is None or default == () else shown(default)
    return FormField(name, widget, info.description or "", text, nullable, choices)


def fields_of(kind: CampaignKind) -> tuple[list[FormField], list[FormField]]:
    """The kind's own fields, then the fields every kind has, in the model's order."""
    own, common = [], []
    for name in Campaign.model_fields:
        if name in HIDDEN:
            continue
        if name in KIND_SPECIFIC:
            if name in KIND_FIELDS[kind]:
                own.append(_describe(name))
        else:
            common.append(_describe(name))
    return own, common


def kind_of(value: str | None) -> CampaignKind | None:
    """A kind named in a form or query, or None when it is not one."""
    for kind in CAMPAIGN_KINDS:
        if value == kind:
            return kind
    return None


def kinds() -> list[tuple[str, str]]:
    """(kind, its name) of every kind, in the model's order."""
    return [(kind, KIND_NAMES[kind]) for kind in CAMPAIGN_KINDS]


def submitted(form: FormData, fields: Sequence[FormField]) -> dict[str, str | list[str]]:
    """What the form holds, field by field, as typed (to show it again after an error)."""
    out: dict[str, str | list[str]] = {}
    for f in fields:
        if f.widget == "segments":
            out[f.name] = [v for v in form.getlist(f.name) if isinstance(v, str)]
        else:
            value = form.get(f.name)
            out[f.name] = value.strip() if isinstance(value, str) else ""
    return out


def _value(f: FormField, text: str) -> Any:
    """A typed value as the API would be sent it (strings: the model parses them)."""
    if f.nullable and text.lower() == NONE_WORD:
        return None
    if f.widget == "list":
        return [part.strip() for part in text.split(",") if part.strip()]
    if f.widget == "moment" and text and "+" not in text and not text.endswith("Z"):
        return text + "+00:00"  # the form's times are UTC
    return text


def changes_of(
    values: Mapping[str, str | list[str]],
    fields: Sequence[FormField],
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields to send: on creation (``current`` None) each filled-in one; on an edit each
    one that differs from ``current`` (the campaign's definition as the API shows it)."""
    out: dict[str, Any] = {}
    for f in fields:
        value = values.get(f.name, "")
        if f.widget == "segments":
            chosen = list(value) if isinstance(value, list) else []
            before = list((current or {}).get(f.name) or [])
            if (current is None and chosen) or (current is not None and set(chosen) != set(before)):
                out[f.name] = chosen
            continue
        text = value if isinstance(value, str) else ""
        if not text:
            continue
        if current is not None and f.name in current and text == shown(current[f.name]):
            continue
        out[f.name] = _value(f, text)
    return out


def field_errors(exc: ValidationError | InvalidInput, names: Sequence[str]) -> dict[str, str]:
    """Each error's message by the field it names; ``definition`` for the rest."""
    errors = (
        [(exc.field, str(exc).split(": ", 1)[-1])]
        if isinstance(exc, InvalidInput)
        else invalid_fields(exc)
    )
    out: dict[str, str] = {}
    for where, message in errors:
        message = message.removeprefix("Value error, ")
        field = where.split(".")[0]
        if field not in names:  # a rule over several fields names them in its message
            first = [n for n in names if message.startswith(n)]
            named = first or [n for n in names if f" {n} " in f" {message} "]
            field = named[0] if named else "definition"
        out[field] = f"{out[field]}; {message}" if field in out else message
    return out
