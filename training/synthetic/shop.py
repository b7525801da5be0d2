"""A generated shop as frames, and its files: every random number from one seeded generator."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from service.clock import SECONDS_PER_DAY
from training.synthetic.catalogue import draw_catalogue, draw_users
from training.synthetic.new_users import EVENT_TYPES, Events, draw_new_user_events
from training.synthetic.purchases import draw_purchases
from training.synthetic.spec import ShopSpec

_NS_PER_S = 1_000_000_000
# Oversampling of purchase lines, to make up for lines merged as duplicates; trimmed afterwards.
# Small catalogues merge more; a draw that still falls short is redrawn with more (rarely).
_OVERSAMPLE = 1.12
_OVERSAMPLE_TRIES = 4

ShopFormat = Literal["csv", "parquet"]


@dataclass
class SyntheticShop:
    """A generated shop: pandas frames plus the ground truth the tests check against.

    ``user_cluster[k]`` is the main taste cluster of ``users.iloc[k]``; ``item_cluster[k]`` the
    cluster of ``items.iloc[k]``. ``now`` is the end of the history: every timestamp is <= now.
    """

    purchases: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    user_cluster: np.ndarray
    item_cluster: np.ndarray
    now: pd.Timestamp
    spec: ShopSpec


def generate_shop(spec: ShopSpec) -> SyntheticShop:
    """Generate the shop described by ``spec``; the same spec always gives the same shop."""
    rng = np.random.default_rng(spec.seed)
    now = pd.Timestamp(spec.end).as_unit("ns")
    start_s = now.value // _NS_PER_S - spec.days * SECONDS_PER_DAY

    catalogue = draw_catalogue(spec, rng)
    people = draw_users(spec, rng, catalogue.cluster_share)
    oversample = _OVERSAMPLE
    for _ in range(_OVERSAMPLE_TRIES):
        lines = draw_purchases(spec, rng, catalogue, people, oversample)
        shortfall = spec.n_interactions - len(lines["user"])
        if shortfall <= 0:
            break
        oversample *= 1.05 + 1.2 * shortfall / spec.n_interactions
    user_width = max(6, len(str(spec.n_users - 1)))
    item_width = max(5, len(str(spec.n_items - 1)))
    category_width = max(2, len(str(spec.n_categories - 1)))
    # Consumes `lines` column by column, which keeps the peak memory down at scale.
    purchases = _purchases_frame(lines, catalogue.price, start_s, user_width, item_width)
    events = draw_new_user_events(spec, rng, catalogue, people)

    items = _to_frame(
        {
            "item_id": _format_ids("i", np.arange(spec.n_items), item_width),
            "category": _format_ids("c", catalogue.category, category_width),
            "price": catalogue.price,
            "name": pa.array(catalogue.names, type=pa.string()),
        }
    )
    users = _to_frame(
        {
            "user_id": _format_ids("u", np.arange(spec.n_users), user_width),
            "signed_up_at": _timestamps(start_s, people.signed_up_s),
        }
    )
    return SyntheticShop(
        purchases=purchases,
        items=items,
        users=users,
        events=_events_frame(events, start_s, user_width, item_width),
        user_cluster=people.cluster,
        item_cluster=catalogue.cluster,
        now=now,
        spec=spec,
    )


def write_shop(shop: SyntheticShop, directory: Path, fmt: ShopFormat = "csv") -> dict[str, Path]:
    """Write purchases, items, users and events as ``<name>.<fmt>`` files under ``directory``.

    Creates the directory; each file is written to a temporary file beside it and then renamed
    over the target, so a reader never sees half a file. Returns the paths by table name.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown format {fmt!r}; use 'csv' or 'parquet'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frames = {
        "purchases": shop.purchases,
        "items": shop.items,
        "users": shop.users,
        "events": shop.events,
    }
    paths: dict[str, Path] = {}
    for name, frame in frames.items():
        target = directory / f"{name}.{fmt}"
        _write_atomically(frame, target, fmt)
        paths[name] = target
    return paths


# --- frames and files -----------------------------------------------------------------------


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded ids (``u000123``) for many numbers at once, built as one Arrow buffer.

    Numbers are formatted once each (``0 .. max``) into fixed-width byte rows, which are then
    gathered as opaque ``V<row>`` items: two vectorised passes, no Python string per row.
    """
    n = len(numbers)
    row = len(prefix) + width
    numbers = np.asarray(numbers)
    size = int(numbers.max(initial=-1)) + 1
    if size > 10**width:
        raise ValueError(f"{prefix!r} ids need more than {width} digits")
    if size <= 2 * n:
        rows = _digit_rows(prefix, np.arange(size), width).view(f"V{row}").ravel()
        data = np.take(rows, numbers).view(np.uint8)
    else:
        data = _digit_rows(prefix, numbers, width).ravel()
    offset_type = np.int32 if n * row < 2**31 else np.int64
    offsets = np.arange(0, (n + 1) * row, row, dtype=offset_type)
    string_type = pa.string() if offset_type is np.int32 else pa.large_string()
    return pa.Array.from_buffers(string_type, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _digit_rows(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """``prefix`` plus ``width`` zero-padded decimal digits per number, as ASCII byte rows."""
    head = len(prefix)
    data = np.empty((len(numbers), head + width), dtype=np.uint8)
    data[:, :head] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    # 32-bit division is about twice as fast as 64-bit; ids beyond 4e9 fall back to 64 bits.
    small = len(numbers) == 0 or int(numbers.max()) < 2**32
    rest: np.ndarray = numbers.astype(np.uint32 if small else np.uint64)
    for column in range(head + width - 1, head - 1, -1):
        quotient = rest // 10
        data[:, column] = rest - quotient * 10 + ord("0")
        rest = quotient
    return data


def _timestamps(start_s: int, seconds: np.ndarray) -> np.ndarray:
    nanoseconds = (start_s + seconds.astype(np.int64)) * _NS_PER_S
    return nanoseconds.view("datetime64[ns]")


def _to_frame(columns: dict[str, pa.Array | np.ndarray]) -> pd.DataFrame:
    """A frame over the given arrays without copying them: Arrow strings become pandas' default
    string dtype (``str``), numpy arrays stay as they are (owned, writable)."""
    string_dtype = pd.Series([""]).dtype
    data = {
        name: pd.array(values, dtype=string_dtype) if isinstance(values, pa.Array) else values
        for name, values in columns.items()
    }
    return pd.DataFrame(data, copy=False)


def _purchases_frame(
    lines: dict[str, np.ndarray],
    item_price: np.ndarray,
    start_s: int,
    user_width: int,
    item_width: int,
) -> pd.DataFrame:
    """Purchases as a frame; empties ``lines`` as it goes so each array is freed once used."""
    user_id = _format_ids("u", lines.pop("user"), user_width)
    item = lines.pop("item")
    item_id = _format_ids("i", item, item_width)
    price = item_price[item]
    del item
    timestamp = _timestamps(start_s, lines.pop("time_s"))
    quantity = lines.pop("quantity")
    order = lines.pop("order")
    order_width = max(7, len(str(int(order.max(initial=0)))))
    order_id = _format_ids("o", order, order_width)
    del order
    return _to_frame(
        {
            "user_id": user_id,
            "item_id": item_id,
            "timestamp": timestamp,
            "quantity": quantity,
            "price": price,
            "order_id": order_id,
        }
    )


def _events_frame(events: Events, start_s: int, user_width: int, item_width: int) -> pd.DataFrame:
    kinds = pa.array(list(EVENT_TYPES), type=pa.string())
    return _to_frame(
        {
            "user_id": _format_ids("u", events.user, user_width),
            "item_id": _format_ids("i", events.item, item_width),
            "type": kinds.take(pa.array(events.kind, type=pa.int64())),
            "timestamp": _timestamps(start_s, events.time_s),
        }
    )


def _write_atomically(frame: pd.DataFrame, target: Path, fmt: ShopFormat) -> None:
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    try:
        if fmt == "csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
