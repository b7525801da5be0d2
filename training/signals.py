"""Weaker training signals: the views and add-to-carts the API ingested, next to purchases.

A purchase is the strongest evidence of taste; a view or an add-to-cart is weaker but far more
plentiful. The trainer fits a second ALS (the ``als_signals`` component) on the purchases plus
these events, each worth a fraction of a purchase (``ModelParams.view_weight`` and
``add_to_cart_weight``) and decayed with its age like a purchase. Everything else stays
purchase-only: the first ALS, history, popularity, trending, EASE, "buy again", and every
evaluation figure (the model is judged on the purchases it predicts).

Every visitor counts (``ModelParams.every_visitor``, on by default): a user who only browsed and
an item that was only viewed or carted get a row and a column of the second ALS's matrix. So the
views of a product nobody bought yet, by users who bought other things, give it a vector in the
space of their tastes (it can be recommended before its first sale), and visitors who never buy
still shape the vectors of what they look at. With it off, as before, only users and items that
have purchases in the stage are used and the rest is counted as ignored.

Rules that keep the signals honest:

- a stage only sees signals up to its own reference time, so the validation and test stages never
  learn from browsing that happened inside the window they are scored on, nor get a row for a
  visitor or an item first seen there;
- the rows of the purchases come first and keep their order, so the purchase components and the
  evaluation (same test users, same truth) do not depend on who else browsed;
- one user's signals on one item add at most ``PAIR_CAP`` purchase (a page refreshed fifty times is
  not fifty purchases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from service.clock import SECONDS_PER_DAY
from training.encode import MIN_AGE_DAYS

SIGNAL_TYPES = ("view", "add_to_cart")
PAIR_CAP = 1.0


def _no_ids() -> pd.Index:
    return pd.Index([], dtype=object)


@dataclass(frozen=True, eq=False)
class Signals:
    """Signal events in the run's code space, sorted by time.

    A user code below ``known_users`` is a position in the run's ``IdMaps.users`` (a user with
    purchases); a code ``known_users + k`` is ``new_users[k]``, a visitor seen only in the
    signals. Items likewise (``known_items``, ``new_items``). ``kind`` indexes
    ``SIGNAL_TYPES``; ``ts`` is nanoseconds since the epoch (UTC); ``ignored`` counts, per type,
    the events left out because their user or item has no purchase (``purchasers_only``).
    """

    user_codes: npt.NDArray[np.int64]
    item_codes: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int8]
    ignored: tuple[int, ...] = (0,) * len(SIGNAL_TYPES)
    known_users: int = 0
    known_items: int = 0
    new_users: pd.Index = field(default_factory=_no_ids)
    new_items: pd.Index = field(default_factory=_no_ids)

    @classmethod
    def empty(cls) -> Signals:
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, nothing, np.zeros(0, dtype=np.int8))

    def __len__(self) -> int:
        return len(self.ts)

    def _subset(self, keep: npt.NDArray[np.bool_] | slice, **changes: Any) -> Signals:
        return Signals(
            self.user_codes[keep],
            self.item_codes[keep],
            self.ts[keep],
            self.kind[keep],
            changes.get("ignored", self.ignored),
            self.known_users,
            self.known_items,
            self.new_users,
            self.new_items,
        )

    def until(self, moment: pd.Timestamp) -> Signals:
        """The events at or before ``moment``."""
        end = int(np.searchsorted(self.ts, pd.Timestamp(moment).value, side="right"))
        return self._subset(slice(0, end), ignored=(0,) * len(SIGNAL_TYPES))

    def only(self, weights: tuple[float, ...]) -> Signals:
        """The events of the types with a weight above 0 (those a model with ``weights`` uses)."""
        wanted = np.asarray(weights, dtype=np.float64) > 0
        ignored = tuple(n if wanted[k] else 0 for k, n in enumerate(self.ignored))
        return self._subset(wanted[self.kind], ignored=ignored)

    def purchasers_only(self) -> Signals:
        """The events of users and items with purchases (the rule before every visitor
        counted); the others are added to ``ignored``, per type."""
        known = (self.user_codes < self.known_users) & (self.item_codes < self.known_items)
        dropped = np.bincount(self.kind[~known], minlength=len(SIGNAL_TYPES))
        ignored = tuple(int(a + b) for a, b in zip(self.ignored, dropped, strict=True))
        return self._subset(known, ignored=ignored)

    @property
    def newest(self) -> pd.Timestamp | None:
        """The time of the latest event (None when there is none)."""
        return pd.Timestamp(int(self.ts[-1])) if len(self.ts) else None

    def ids_of_new_items(self, codes: npt.NDArray[np.int64]) -> pd.Index:
        """The shop's ids of item codes at or above ``known_items``."""
        return self.new_items[np.asarray(codes, dtype=np.int64) - self.known_items]

    def summary(self) -> dict[str, Any]:
        """Events per type, the users and items they name (those without any purchase apart),
        and the events ignored, for the manifest."""
        per_type = np.bincount(self.kind, minlength=len(SIGNAL_TYPES))
        newest = self.newest
        users = np.unique(self.user_codes)
        items = np.unique(self.item_codes)
        return {
            **{name: int(per_type[k]) for k, name in enumerate(SIGNAL_TYPES)},
            "ignored_no_purchases": sum(self.ignored),
            "until": None if newest is None else newest.isoformat(),
            "users": len(users),
            "items": len(items),
            "users_without_purchases": int((users >= self.known_users).sum()),
            "items_without_purchases": int((items >= self.known_items).sum()),
        }

    def rows(
        self,
        user_codes: npt.NDArray[np.int64],
        item_codes: npt.NDArray[np.int64],
        until: pd.Timestamp,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """A stage's rows and columns for the second ALS: its purchase rows ``user_codes`` /
        ``item_codes`` first, in their order, then every other user and item of the events up
        to ``until`` (sorted by code)."""
        kept = self.until(until)
        return _extend(user_codes, kept.user_codes), _extend(item_codes, kept.item_codes)

    def matrix(
        self,
        user_codes: npt.NDArray[np.int64],
        item_codes: npt.NDArray[np.int64],
        reference_time: pd.Timestamp,
        weights: tuple[float, float],
        half_life_days: float,
        *,
        until: pd.Timestamp | None = None,
    ) -> sp.csr_matrix | None:
        """Decayed, weighted signals per (user, item) of a stage, capped at ``PAIR_CAP``.

        ``user_codes`` / ``item_codes`` are the codes of the matrix's rows and columns (any
        order; events of other codes are left out). Events after ``until`` (default
        ``reference_time``) are left out; ages count from ``reference_time``, and an event after
        it is as fresh as can be. None when nothing remains.
        """
        kept = self.until(reference_time if until is None else max(until, reference_time))
        type_weight = np.asarray(weights, dtype=np.float64)
        if not len(kept) or not type_weight.any():
            return None
        user_idx, found_user = _positions(user_codes, kept.user_codes)
        item_idx, found_item = _positions(item_codes, kept.item_codes)
        weight = type_weight[kept.kind]
        use = found_user & found_item & (weight > 0)
        if not use.any():
            return None
        ref_ns = pd.Timestamp(reference_time).value
        age = np.maximum((ref_ns - kept.ts[use]) / (SECONDS_PER_DAY * 1e9), MIN_AGE_DAYS)
        value = weight[use] * np.exp(-age / half_life_days)
        shape = (len(user_codes), len(item_codes))
        summed = sp.coo_matrix((value, (user_idx[use], item_idx[use])), shape=shape).tocsr()
        summed.sum_duplicates()
        summed.data = np.minimum(summed.data, PAIR_CAP).astype(np.float32)
        summed.eliminate_zeros()
        return summed.astype(np.float32)


def _extend(first: npt.NDArray[np.int64], codes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``first`` followed by the distinct ``codes`` not in it, sorted."""
    others = np.setdiff1d(codes, first, assume_unique=False)
    return np.concatenate([np.asarray(first, dtype=np.int64), others.astype(np.int64)])


def _positions(
    row_codes: npt.NDArray[np.int64], codes: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Each code's position in ``row_codes`` (distinct, any order) and whether it is there."""
    if not len(row_codes) or not len(codes):
        return np.zeros(len(codes), dtype=np.int64), np.zeros(len(codes), dtype=bool)
    size = int(max(row_codes.max(), codes.max())) + 1
    lookup = np.full(size, -1, dtype=np.int64)
    lookup[row_codes] = np.arange(len(row_codes))
    where = lookup[codes]
    found = where >= 0
    return np.where(found, where, 0), found


def encode_signals(
    events: pd.DataFrame | Iterable[pd.DataFrame], user_ids: pd.Index, item_ids: pd.Index
) -> Signals:
    """Signal events (columns user_id, item_id, timestamp, type) in a run's code space.

    ``user_ids`` / ``item_ids`` are the run's ``IdMaps``: an event's codes are its ids'
    positions there, and a user or item they do not know (a visitor who never bought, a product
    not sold yet) gets a code after them, in ``Signals.new_users`` / ``new_items``.

    ``events`` is one frame or an iterable of chunks
    (``training.data.database.load_database_signals``); each chunk is reduced to integer codes
    before the next is read, so memory stays at about 25 bytes an event (plus the ids of the
    users and items without purchases). Other types than ``SIGNAL_TYPES`` are dropped silently.
    """
    chunks = [events] if isinstance(events, pd.DataFrame) else events
    new_users = _NewIds(len(user_ids))
    new_items = _NewIds(len(item_ids))
    parts = [_encode_chunk(chunk, user_ids, item_ids, new_users, new_items) for chunk in chunks]
    parts = [p for p in parts if len(p)]
    if not parts:
        return dataclasses.replace(
            Signals.empty(), known_users=len(user_ids), known_items=len(item_ids)
        )
    ts = np.concatenate([p.ts for p in parts])
    order = np.argsort(ts, kind="stable")
    return Signals(
        user_codes=np.concatenate([p.user_codes for p in parts])[order],
        item_codes=np.concatenate([p.item_codes for p in parts])[order],
        ts=ts[order],
        kind=np.concatenate([p.kind for p in parts])[order],
        known_users=len(user_ids),
        known_items=len(item_ids),
        new_users=new_users.index(),
        new_items=new_items.index(),
    )


class _NewIds:
    """Codes for ids the purchases do not know, after the ``known`` ones, in order of arrival."""

    def __init__(self, known: int) -> None:
        self.known = known
        self._seen = pd.Index([], dtype=object)

    def codes(self, ids: pd.Series) -> npt.NDArray[np.int64]:
        fresh = pd.Index(pd.unique(ids.to_numpy(dtype=object))).difference(self._seen, sort=False)
        if len(fresh):
            self._seen = self._seen.append(fresh)
        codes: npt.NDArray[np.int64] = self._seen.get_indexer(ids).astype(np.int64)
        return codes + self.known

    def index(self) -> pd.Index:
        return self._seen


def _encode_chunk(
    frame: pd.DataFrame,
    user_ids: pd.Index,
    item_ids: pd.Index,
    new_users: _NewIds,
    new_items: _NewIds,
) -> Signals:
    if frame.empty:
        return Signals.empty()
    frame = frame[pd.Index(SIGNAL_TYPES).get_indexer(frame["type"]) >= 0]
    if frame.empty:
        return Signals.empty()
    kind = pd.Index(SIGNAL_TYPES).get_indexer(frame["type"])
    user_codes = user_ids.get_indexer(frame["user_id"]).astype(np.int64)
    item_codes = item_ids.get_indexer(frame["item_id"]).astype(np.int64)
    unknown_user, unknown_item = user_codes < 0, item_codes < 0
    if unknown_user.any():
        user_codes[unknown_user] = new_users.codes(frame["user_id"].loc[unknown_user])
    if unknown_item.any():
        item_codes[unknown_item] = new_items.codes(frame["item_id"].loc[unknown_item])
    ts = pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return Signals(
        user_codes=user_codes,
        item_codes=item_codes,
        ts=ts,
        kind=kind.astype(np.int8),
    )
