"""The offers' vocabulary: what a decision can be, which of them are stored, a coupon's states.

The one definition of this vocabulary: the API's schemas and the table's check constraint are
built from these types, and the records that carry a decision or a coupon state are typed with
them (mypy refuses an unknown kind there). Comparisons and SQL values in the engine and the
repositories still spell the names. (Migration 0002 keeps its own copy, as migrations are
history and must not change when the code does.)
"""

from __future__ import annotations

from typing import Literal, get_args

# final decisions: a user is decided once per campaign, and these are never changed;
# not_targeted: uplift targeting left the user's segment out (issue 12, item 4)
FinalKind = Literal["issued", "holdout", "not_targeted"]
# what a decision row may hold: a budget miss may still become final later
RecordedKind = Literal[FinalKind, "budget_exhausted"]
# every answer of an evaluation; not_eligible and already_decided are answers, not rows
DecisionKind = Literal[FinalKind, "not_eligible", "already_decided", "budget_exhausted"]
CouponState = Literal["active", "redeemed", "expired"]

FINAL: tuple[FinalKind, ...] = get_args(FinalKind)
RECORDED: tuple[RecordedKind, ...] = get_args(RecordedKind)
COUPON_STATES: tuple[CouponState, ...] = get_args(CouponState)
# answers after which evaluating the user again cannot change anything
SETTLED: frozenset[DecisionKind] = frozenset((*FINAL, "already_decided"))
