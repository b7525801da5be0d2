"""Weaker training signals: the views and add-to-carts the API ingested, next to purchases.

A purchase is the strongest evidence of taste; a view or an add-to-cart is weaker but far more
plentiful. The trainer fits a second ALS (the ``als_signals`` component) on the purchases plus
these events, each worth a fraction of a purchase (``ModelParams.view_weight`` and
``add_to_cart_weight``) and decayed with its age like a purchase. Everything else stays
purchase-only: the first ALS, history, popularity, trending, EASE, "buy again", and every
evaluation figure (the model is judged on the purchases it predicts).

Rules that keep the signals honest:

- a stage only sees signals up to its own reference time, so the validation and test stages never
  learn from browsing that happened inside the window they are scored on;
- only users and items that have purchases in the stage are used; the model has rows for nothing
  else (a visitor who only browses is served by the service's fold-in of their events);
- one user's signals on one item add at most ``PAIR_CAP`` purchase (a page refreshed fifty times is
  not fifty purchases).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from service.clock import SECONDS_PER_DAY
from training.encode import MIN_AGE_DAYS

SIGNAL_TYPES = ("view", "add_to_cart")
PAIR_CAP = 1.0


@dataclass(frozen=True)
class Signals:
    """Signal events in the run's code space (positions in ``IdMaps``), sorted by time.

    ``kind`` indexes ``SIGNAL_TYPES``; ``ts`` is nanoseconds since the epoch (UTC);
    ``ignored`` counts, per type, the events of users or items without any purchase.
    """

    user_codes: npt.NDArray[np.int64]
    item_codes: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int8]
    ignored: tuple[int, ...] = (0,) * len(SIGNAL_TYPES)

    @classmethod
    def empty(cls) -> Signals:
        nothing = np.zeros(0, dtype=np.int64)
        return cls(nothing, nothing, nothing, np.zeros(0, dtype=np.int8))

    def __len__(self) -> int:
        return len(self.ts)

    def until(self, moment: pd.Timestamp) -> Signals:
        """The events at or before ``moment``."""
        end = int(np.searchsorted(self.ts, pd.Timestamp(moment).value, side="right"))
        return Signals(self.user_codes[:end], self.item_codes[:end], self.ts[:end], self.kind[:end])

    def only(self, weights: tuple[float, ...]) -> Signals:
        """The events of the types with a weight above 0 (those a model with ``weights`` uses)."""
        wanted = np.asarray(weights, dtype=np.float64) > 0
        keep = wanted[self.kind]
        ignored = tuple(n if wanted[k] else 0 for k, n in enumerate(self.ignored))
        return Signals(
            self.user_codes[keep], self.item_codes[keep], self.ts[keep], self.kind[keep], ignored
        )

    @property
    def newest(self) -> pd.Timestamp | None:
        """The time of the latest event (None when there is none)."""
        return pd.Timestamp(int(self.ts[-1])) if len(self.ts) else None

    def summary(self) -> dict[str, Any]:
        """Events per type and events ignored, for the manifest."""
        per_type = np.bincount(self.kind, minlength=len(SIGNAL_TYPES))
        newest = self.newest
        return {
            **{name: int(per_type[k]) for k, name in enumerate(SIGNAL_TYPES)},
            "ignored_no_purchases": sum(self.ignored),
            "until": None if newest is None else newest.isoformat(),
        }

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

        ``user_codes`` / ``item_codes`` are a stage's sorted row and column codes. Events after
        ``until`` (default ``reference_time``) are left out; ages count from ``reference_time``,
        and an event after it is as fresh as can be. None when nothing remains.
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


def _positions(
    sorted_codes: npt.NDArray[np.int64], codes: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Each code's position in ``sorted_codes`` and whether it is there at all."""
    if not len(sorted_codes):
        return np.zeros(len(codes), dtype=np.int64), np.zeros(len(codes), dtype=bool)
    where = np.searchsorted(sorted_codes, codes)
    clipped = np.minimum(where, len(sorted_codes) - 1)
    return clipped.astype(np.int64), sorted_codes[clipped] == codes


def encode_signals(
    events: pd.DataFrame | Iterable[pd.DataFrame], user_ids: pd.Index, item_ids: pd.Index
) -> Signals:
    """Signal events (columns user_id, item_id, timestamp, type) in a run's code space.

    ``user_ids`` / ``item_ids`` are the run's ``IdMaps``: an event's codes are its ids'
    positions there.

    ``events`` is one frame or an iterable of chunks
    (``training.data.database.load_database_signals``); each chunk is reduced to integer codes
    before the next is read, so memory stays at about 25 bytes an event. Events of a user or an
    item the purchases do not know are counted (per type) in ``ignored`` and dropped; other
    types than ``SIGNAL_TYPES`` are dropped silently.
    """
    chunks = [events] if isinstance(events, pd.DataFrame) else events
    parts = [_encode_chunk(chunk, user_ids, item_ids) for chunk in chunks]
    if not parts:
        return Signals.empty()
    ts = np.concatenate([p.ts for p in parts])
    order = np.argsort(ts, kind="stable")
    return Signals(
        user_codes=np.concatenate([p.user_codes for p in parts])[order],
        item_codes=np.concatenate([p.item_codes for p in parts])[order],
        ts=ts[order],
        kind=np.concatenate([p.kind for p in parts])[order],
        ignored=tuple(int(n) for n in np.sum([p.ignored for p in parts], axis=0)),
    )


def _encode_chunk(frame: pd.DataFrame, user_ids: pd.Index, item_ids: pd.Index) -> Signals:
    if frame.empty:
        return Signals.empty()
    kind = pd.Index(SIGNAL_TYPES).get_indexer(frame["type"])
    user_codes = user_ids.get_indexer(frame["user_id"])
    item_codes = item_ids.get_indexer(frame["item_id"])
    typed = kind >= 0
    known = typed & (user_codes >= 0) & (item_codes >= 0)
    ts = pd.to_datetime(frame["timestamp"]).to_numpy(dtype="datetime64[ns]").view(np.int64)
    return Signals(
        user_codes=user_codes[known].astype(np.int64),
        item_codes=item_codes[known].astype(np.int64),
        ts=ts[known],
        kind=kind[known].astype(np.int8),
        ignored=tuple(
            int(n) for n in np.bincount(kind[typed & ~known], minlength=len(SIGNAL_TYPES))
        ),
    )
