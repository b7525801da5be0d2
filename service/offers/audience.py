"""A campaign's audience and excluded segments (issue 12, item 4): plain functions, no database.

A user's segment is their row of ``user_segments`` (issue 12, item 1): a lifecycle stage and a
loyalty type, two disjoint vocabularies, so a segment is named by its value alone
(``mercenary``, ``lapsed``). A user without a row yet (never computed, or too new) is in the
segment ``unknown`` on both axes.

The audience lists segments; within one axis any listed value admits, and when both axes are
listed both must admit: ``audience = ["at_risk", "lapsed", "habitual"]`` is "at risk or lapsed,
and habitual". ``unknown`` in the audience admits users without a row. An excluded segment
refuses whatever the audience says.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Literal, get_args

from service.tables import LIFECYCLE_STAGES, LOYALTY_TYPES

if TYPE_CHECKING:
    from service.offers.campaigns import Campaign

UNKNOWN = "unknown"  # a user without a user_segments row
Axis = Literal["lifecycle_stage", "loyalty_type"]
AXES: tuple[Axis, ...] = get_args(Axis)
# each axis's segments as the stats list them: the vocabulary, then users without a row
AXIS_SEGMENTS: dict[Axis, tuple[str, ...]] = {
    "lifecycle_stage": (*LIFECYCLE_STAGES, UNKNOWN),
    "loyalty_type": (*LOYALTY_TYPES, UNKNOWN),
}
SEGMENTS: tuple[str, ...] = (*LIFECYCLE_STAGES, *LOYALTY_TYPES, UNKNOWN)


def segment_on(axis: Axis, lifecycle_stage: str | None, loyalty_type: str | None) -> str:
    """The user's segment on ``axis``: their stage or loyalty type, ``unknown`` without a row."""
    value = lifecycle_stage if axis == "lifecycle_stage" else loyalty_type
    return value or UNKNOWN


def _listed(names: Collection[str], axis: Axis) -> set[str]:
    return {n for n in names if n in AXIS_SEGMENTS[axis] and n != UNKNOWN}


def in_audience(
    audience: Collection[str], lifecycle_stage: str | None, loyalty_type: str | None
) -> bool:
    """Whether a user of this stage and loyalty type (None: no row) is in ``audience``.

    An empty audience is everyone.
    """
    if not audience:
        return True
    if lifecycle_stage is None or loyalty_type is None:
        return UNKNOWN in audience
    stages, types = _listed(audience, "lifecycle_stage"), _listed(audience, "loyalty_type")
    if not stages and not types:  # only "unknown" is listed
        return False
    return (not stages or lifecycle_stage in stages) and (not types or loyalty_type in types)


def audience_reasons(
    campaign: Campaign, lifecycle_stage: str | None, loyalty_type: str | None
) -> list[str]:
    """Why the campaign's audience refuses this user: ``not_in_audience`` and, for each
    excluded segment the user is in, ``excluded_segment:<name>``; empty when admitted."""
    reasons = []
    if not in_audience(campaign.audience, lifecycle_stage, loyalty_type):
        reasons.append("not_in_audience")
    mine = {segment_on(axis, lifecycle_stage, loyalty_type) for axis in AXES}
    reasons.extend(f"excluded_segment:{s}" for s in campaign.exclude_segments if s in mine)
    return reasons


def closed_segment(campaign: Campaign, axis: Axis, segment: str) -> str | None:
    """Why no user of ``segment`` (on ``axis``) is decided any more: ``excluded``, or
    ``outside_audience`` when the audience admits none of them; None when some may be."""
    if segment in campaign.exclude_segments:
        return "excluded"
    audience = campaign.audience
    if not audience:
        return None
    if segment == UNKNOWN:
        return None if UNKNOWN in audience else "outside_audience"
    here = _listed(audience, axis)
    other = _listed(audience, "loyalty_type" if axis == "lifecycle_stage" else "lifecycle_stage")
    if here:
        return None if segment in here else "outside_audience"
    # this axis is not restricted: its users are admitted when the other axis admits them
    return None if other else "outside_audience"
