"""Bulk-loading a shop's past data into the service's database (``recoffer import``).

Three kinds of file, read with the trainer's readers (CSV, CSV.gz, Parquet):

* ``purchases``: order lines (user, item, timestamp; quantity, unit price, currency, order,
  category and name when present), in the ``generic`` layout or the ``online-retail`` one,
  whose cleaning rules (missing customer, cancellation, returns, free lines, non-product codes)
  skip what is not a purchase. Stored as ``purchase`` events; items not in the catalogue yet
  are added with the name and category seen.
* ``events``: behaviour events (user_id, type, item_id, timestamp; order_id, quantity, price,
  currency, client_event_id when present).
* ``items``: the catalogue (item_id; name, category, price, currency, in_stock); every other
  column becomes an attribute.

Idempotent: an event's natural key is its ``client_event_id``, or, when the file has none, a
digest of the row's content (the same line imported twice is stored once); an item's key is
its id. Rows the service could not store (an id outside its alphabet, a time in the future, an
amount that is not exact, an unknown type) are *bad rows*: reported with their line numbers,
and the file is refused (DataError) unless ``skip_bad`` is set. Writes go in batches, each in
one transaction.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from service.errors import DataError
from training.data.cells import as_ids, as_text, parse_numbers, parse_timestamps
from training.data.files import DEFAULT_OPTIONS, ReadOptions, column_names, read_table
from training.data.formats import (
    NON_PRODUCT_CODES,
    NON_PRODUCT_PREFIX,
    ONLINE_RETAIL_MAPPING,
    parse_mapping,
)

Kind = Literal["purchases", "events", "items"]
KINDS: tuple[str, ...] = ("purchases", "events", "items")
BATCH_ROWS = 5_000
SHOWN_BAD_ROWS = 5  # in the one-line refusal; the report keeps up to MAX_BAD_ROWS
MAX_BAD_ROWS = 1_000
KEY_PREFIX = "import:"
_PLAIN_ID = r"[A-Za-z0-9._:@-]{1,128}"  # service.ids' alphabet and length (dot segments aside)

# role -> default column name, per kind (a --columns mapping renames)
ROLES: dict[str, dict[str, str]] = {
    "purchases": {
        "user": "user_id",
        "item": "item_id",
        "timestamp": "timestamp",
        "quantity": "quantity",
        "price": "price",
        "currency": "currency",
        "order": "order_id",
        "category": "category",
        "name": "name",
    },
    "events": {
        "user": "user_id",
        "type": "type",
        "item": "item_id",
        "timestamp": "timestamp",
        "order": "order_id",
        "quantity": "quantity",
        "price": "price",
        "currency": "currency",
        "client_event_id": "client_event_id",
    },
    "items": {
        "item": "item_id",
        "name": "name",
        "category": "category",
        "price": "price",
        "currency": "currency",
        "in_stock": "in_stock",
    },
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "purchases": ("user", "item", "timestamp"),
    "events": ("user", "type", "timestamp"),
    "items": ("item",),
}
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class BadRow:
    line: str  # "line 17" for CSV (the header is line 1), "row 16" for Parquet
    reason: str


@dataclass
class ImportReport:
    """What an import did: rows read, written, already there, skipped by rule, bad."""

    kind: str
    source: str
    rows_read: int = 0
    written: int = 0
    already_there: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bad_rows: int = 0
    bad: list[BadRow] = field(default_factory=list)
    items_added: int = 0
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "rows_read": self.rows_read,
            "written": self.written,
            "already_there": self.already_there,
            "skipped": dict(self.skipped),
            "bad_rows": self.bad_rows,
            "bad": [{"line": b.line, "reason": b.reason} for b in self.bad],
            "items_added": self.items_added,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second),
        }

    def render(self) -> str:
        lines = [
            f"{self.source}: {self.rows_read:,} rows read, {self.written:,} {self.kind} written, "
            f"{self.already_there:,} already there, in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s)"
        ]
        lines += [f"  skipped {rule}: {rows:,}" for rule, rows in self.skipped.items() if rows]
        if self.items_added:
            lines.append(f"  {self.items_added:,} items added to the catalogue")
        if self.bad_rows:
            lines.append(f"  {self.bad_rows:,} bad rows skipped:")
            lines += [f"    {b.line}: {b.reason}" for b in self.bad]
        return "\n".join(lines)


# --- reading and checking --------------------------------------------------------------------


@dataclass
class _Table:
    """A file's rows under role names, typed, with each row's line and whether it is usable."""

    columns: dict[str, pd.Series]
    lines: Callable[[int], str]
    rows: int
    alive: np.ndarray
    bad: dict[int, str] = field(default_factory=dict)  # position -> first reason
    skipped: dict[str, int] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # items: columns that become attributes

    def refuse(self, mask: np.ndarray | pd.Series, reason: Callable[[int], str] | str) -> None:
        """Mark rows bad (each keeps its first reason)."""
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & self.alive)
        for position in hit.tolist():
            self.bad[position] = reason(position) if callable(reason) else reason
        self.alive[hit] = False

    def skip(self, rule: str, mask: np.ndarray | pd.Series) -> None:
        """Rows that are not what is imported (a cancellation is not a purchase): counted."""
        hit = np.asarray(mask, dtype=bool) & self.alive
        self.skipped[rule] = int(hit.sum())
        self.alive &= ~hit

    def get(self, role: str) -> pd.Series | None:
        return self.columns.get(role)


def _mapping(
    kind: str, path: Path, fmt: str, columns: str | None, options: ReadOptions
) -> dict[str, str]:
    """role -> column in the file."""
    if fmt == "online-retail":
        if kind != "purchases":
            raise DataError("--format online-retail is for purchase files only")
        if columns:
            raise DataError("the online-retail format has a fixed column mapping; do not pass one")
        return dict(ONLINE_RETAIL_MAPPING.mapped())
    if fmt != "generic":
        raise DataError(f"unknown format {fmt!r}; expected generic or online-retail")
    roles = ROLES[kind]
    chosen = parse_mapping(columns, list(roles)) if columns else {}
    present = column_names(path, options) or []
    mapping = {}
    for role, default in roles.items():
        column = chosen.get(role, default)
        if role in chosen or role in REQUIRED[kind] or column in present:
            mapping[role] = column
    return mapping


def _line_namer(path: Path) -> Callable[[int], str]:
    if path.name.lower().endswith((".parquet", ".pq")):
        return lambda position: f"row {position + 1}"
    return lambda position: f"line {position + 2}"  # line 1 is the header


def read_rows(
    kind: str,
    path: Path,
    *,
    fmt: str = "generic",
    columns: str | None = None,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> _Table:
    """The file's rows under role names; unparseable cells raise DataError (one line)."""
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; expected one of: {', '.join(KINDS)}")
    mapping = _mapping(kind, path, fmt, columns, options)
    everything = kind == "items"  # unmapped columns become attributes
    raw = read_table(path, required=list(mapping.values()), everything=everything, options=options)
    raw = raw.reset_index(drop=True)
    source = str(path)
    typed: dict[str, pd.Series] = {}
    for role, column in mapping.items():
        values = raw[column]
        if role in ("user", "item", "order", "client_event_id"):
            typed[role] = as_ids(values)
        elif role == "timestamp":
            typed[role] = parse_timestamps(values, column, source, options)
        elif role == "quantity":
            typed[role] = parse_numbers(values, column, source)
        elif role == "price":
            parse_numbers(values, column, source)  # a cell that is no number: the file is refused
            typed[role] = values  # kept as written: money is read exactly below
        else:
            typed[role] = as_text(values)
    table = _Table(
        columns=typed,
        lines=_line_namer(path),
        rows=len(raw),
        alive=np.ones(len(raw), dtype=bool),
    )
    if everything:
        used = set(mapping.values())
        table.extra = [c for c in raw.columns if c not in used]
        table.columns.update({f"attr:{c}": as_text(raw[c]) for c in table.extra})
    return table


def _check_ids(table: _Table, roles: Sequence[str]) -> None:
    from pydantic import TypeAdapter, ValidationError

    from service.api.schemas import Id  # the API's one id alphabet

    adapter: TypeAdapter[str] = TypeAdapter(Id)
    for role in roles:
        values = table.get(role)
        if values is None:
            continue
        refused: dict[str, str] = {}
        unique = pd.Series(pd.unique(values[table.alive & values.notna().to_numpy()]))
        # text of the alphabet, 1 to 128 long, and no dot segment, is an id: only the rest
        # goes through the API's validator, one value at a time, for its message
        try:  # a value that is no text is NA here, so it goes to the validator
            plain = unique.str.fullmatch(_PLAIN_ID).fillna(False).astype(bool)
        except AttributeError:  # not text at all
            plain = pd.Series(False, index=unique.index)
        plain &= ~unique.isin([".", ".."])
        for value in unique[~plain].tolist():
            try:
                adapter.validate_python(value)
            except ValidationError as exc:
                refused[str(value)] = exc.errors()[0]["msg"]
        if refused:
            table.refuse(values.isin(list(refused)).to_numpy(), _id_reason(role, values, refused))


def _id_reason(role: str, values: pd.Series, refused: dict[str, str]) -> Callable[[int], str]:
    def reason(position: int) -> str:
        value = values.iloc[position]
        return f"{role} {value!r}: {refused[value]}"

    return reason


def _check_times(table: _Table, now: datetime) -> pd.Series:
    """Aware UTC timestamps; a time more than the API's tolerance in the future is bad."""
    from service.activity.ingest import MAX_FUTURE

    stamps = table.columns["timestamp"]
    limit = pd.Timestamp(now.astimezone(UTC).replace(tzinfo=None) + MAX_FUTURE)
    table.refuse(
        (stamps > limit).to_numpy(),
        lambda p: f"timestamp {stamps.iloc[p]} is in the future",
    )
    return stamps


def _check_quantity(table: _Table) -> pd.Series | None:
    quantity = table.get("quantity")
    if quantity is None:
        return None
    values = quantity.to_numpy(dtype="float64")
    whole = np.isnan(values) | ((values == np.floor(values)) & (np.abs(values) < 1e9))
    table.refuse(~whole, lambda p: f"quantity {values[p]:g} is not a whole number")
    return quantity


def _amounts(table: _Table) -> list[Decimal | None] | None:
    """Exact prices (as written in the file), None where empty; inexact ones are bad rows."""
    from service.money import to_units

    price = table.get("price")
    if price is None:
        return None
    text = as_text(price) if not pd.api.types.is_numeric_dtype(price.dtype) else price
    exact: dict[Any, Decimal | None] = {}
    problems: dict[Any, str] = {}
    codes, uniques = pd.factorize(text)  # missing cells: -1
    for value in uniques.tolist():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            exact[value] = None
            continue
        try:
            # a float from Parquet: its shortest repr is the number the shop wrote
            amount = Decimal(repr(value) if isinstance(value, float) else str(value))
            to_units(amount)
            if amount < 0:
                raise ValueError(f"price {amount} is negative")
            exact[value] = amount
        except (InvalidOperation, ValueError) as exc:
            problems[value] = str(exc) or f"price {value!r} is not an amount"
    if problems:
        mask = text.isin(list(problems)).to_numpy()
        table.refuse(mask, lambda p: problems[text.iloc[p]])
    per_code = [exact.get(v) for v in uniques.tolist()]
    return [None if c < 0 else per_code[c] for c in codes.tolist()]


def _currencies(
    table: _Table, prices: list[Decimal | None] | None, default: str | None
) -> list[str | None]:
    """Each row's currency: its column, else ``default``; a price without one is bad."""
    import re

    column = table.get("currency")
    if default is not None and not re.fullmatch(r"[A-Z]{3}", default):
        raise DataError(f"--currency: {default!r} is not an ISO 4217 code such as EUR")
    if column is None:
        if prices is not None and default is None and any(p is not None for p in prices):
            raise DataError(
                "the file has prices but no currency column: pass --currency (e.g. GBP)"
            )
        return [default] * table.rows
    values = column.fillna(default) if default is not None else column
    invalid = values.notna() & ~values.str.fullmatch(r"[A-Z]{3}").fillna(False)
    table.refuse(invalid.to_numpy(), lambda p: f"currency {values.iloc[p]!r} is not ISO 4217")
    if prices is not None:
        priced = np.array([p is not None for p in prices])
        table.refuse(priced & values.isna().to_numpy(), "a price without its currency")
    codes, uniques = pd.factorize(values)  # missing: -1; one string object per currency
    names = [str(v) for v in uniques.tolist()]
    return [None if c < 0 else names[c] for c in codes.tolist()]


# --- the three kinds -------------------------------------------------------------------------


@dataclass
class Prepared:
    """Rows ready to store, and the report so far."""

    report: ImportReport
    events: list[Any] = field(default_factory=list)  # NewEvent
    items: list[dict[str, Any]] = field(default_factory=list)
    new_items: list[dict[str, Any]] = field(default_factory=list)  # from a purchase file


def prepare(
    kind: str,
    path: Path,
    *,
    fmt: str = "generic",
    columns: str | None = None,
    currency: str | None = None,
    now: datetime | None = None,
    skip_bad: bool = False,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> Prepared:
    """Read ``path``, check every row, and build what :func:`write` stores.

    Raises:
        DataError: the file cannot be used (missing, unreadable, a column missing, a cell that
            is no number or date, prices without currency), or it has bad rows and not
            ``skip_bad``: one line with their count and the first lines.
    """
    path = Path(path)
    now = now or datetime.now(UTC)
    table = read_rows(kind, path, fmt=fmt, columns=columns, options=options)
    report = ImportReport(kind=kind, source=str(path), rows_read=table.rows)
    if kind == "items":
        prepared = _prepare_items(table, report, currency)
    else:
        prepared = _prepare_events(kind, table, report, fmt, currency, now)
    _finish(table, report, path, skip_bad)
    return prepared


def purchase_columns(
    path: Path,
    *,
    fmt: str = "generic",
    columns: str | None = None,
    currency: str | None = None,
    now: datetime | None = None,
    skip_bad: bool = False,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> pd.DataFrame:
    """The purchase lines :func:`prepare` would store from ``path``, as columns, not objects.

    The same reading, skipping and checks (and the same refusal of bad rows); a line with the
    natural key of an earlier one is left out, as the import stores it once. Columns: ``user``,
    ``item``, ``order`` (text, missing as NA), ``ts`` (naive UTC ``datetime64[us]``),
    ``quantity``, ``units`` (price x quantity in ten-thousandths, 0 without a price),
    ``priced`` and ``currency`` (None without a price).

    Raises:
        DataError: as :func:`prepare`.
        OverflowError: an amount would not fit 62 bits (the caller reads the lines instead).
    """
    from service.money import to_units

    path = Path(path)
    now = now or datetime.now(UTC)
    table = read_rows("purchases", path, fmt=fmt, columns=columns, options=options)
    report = ImportReport(kind="purchases", source=str(path), rows_read=table.rows)
    checked = _check_events("purchases", table, report, fmt, currency, now)
    _finish(table, report, path, skip_bad)
    alive = np.flatnonzero(table.alive)

    quantity = (
        np.ones(len(alive), dtype=np.int64)
        if checked.quantity is None
        else np.nan_to_num(checked.quantity.iloc[alive].to_numpy(dtype="float64"), nan=1.0).astype(
            np.int64
        )
    )
    price_key = np.full(len(alive), -1, dtype=np.int64)
    units = np.zeros(len(alive), dtype=np.int64)
    price = table.get("price")
    if price is not None and checked.prices is not None:
        text = as_text(price) if not pd.api.types.is_numeric_dtype(price.dtype) else price
        codes, _ = pd.factorize(text.iloc[alive].reset_index(drop=True))
        present = np.flatnonzero(codes >= 0)
        _, first = np.unique(codes[present], return_index=True)
        exact = [checked.prices[int(alive[present[f]])] for f in first.tolist()]
        # the natural key holds the price as written (10.0 and 10.00 are two keys)
        spelled, _ = pd.factorize(pd.Series([str(e) for e in exact], dtype=object))
        per_code = [0 if e is None else to_units(e) for e in exact]  # never None: checked
        largest = max((abs(u) for u in per_code), default=0) * int(quantity.max(initial=1))
        if largest >= 2**62:
            raise OverflowError("an amount does not fit 62 bits")
        price_key[present] = spelled[codes[present]]
        units[present] = np.array(per_code, dtype=np.int64)[codes[present]] * quantity[present]
    priced = price_key >= 0
    currencies = np.asarray(checked.currencies, dtype=object)[alive]
    currencies[~priced] = None
    columns_: dict[str, Any] = {}
    for role in ("user", "item", "order"):  # categorical: compared and grouped by codes
        values = table.get(role)
        kept = [None] * len(alive) if values is None else values.iloc[alive].reset_index(drop=True)
        columns_[role] = pd.Categorical(kept)
    frame = pd.DataFrame(
        {
            **columns_,
            "ts": pd.DatetimeIndex(checked.stamps.iloc[alive]).to_numpy(dtype="datetime64[us]"),
            "quantity": quantity,
            "price_key": price_key,
            "units": units,
            "priced": priced,
            "currency": pd.Categorical(currencies),
        }
    )
    key = ["user", "item", "ts", "order", "quantity", "price_key", "currency"]
    return frame[~frame.duplicated(subset=key)].reset_index(drop=True)


def _finish(table: _Table, report: ImportReport, path: Path, skip_bad: bool) -> None:
    """Count the skipped and bad rows into ``report``; refuse bad rows unless ``skip_bad``."""
    report.skipped = table.skipped
    report.bad_rows = len(table.bad)
    report.bad = [BadRow(table.lines(p), r) for p, r in sorted(table.bad.items())[:MAX_BAD_ROWS]]
    if report.bad_rows and not skip_bad:
        shown = "; ".join(f"{b.line}: {b.reason}" for b in report.bad[:SHOWN_BAD_ROWS])
        raise DataError(
            f"{report.bad_rows:,} bad rows in {path} ({shown}); fix them or pass --skip-bad-rows"
        )


@dataclass
class _Checked:
    """The checked columns of an event or purchase file (rows still ``table.alive`` are kept)."""

    types: pd.Series
    stamps: pd.Series
    quantity: pd.Series | None
    prices: list[Decimal | None] | None
    currencies: list[str | None]


def _check_events(
    kind: str,
    table: _Table,
    report: ImportReport,
    fmt: str,
    currency: str | None,
    now: datetime,
) -> _Checked:
    """Skip what is not imported and refuse the bad rows of an event or purchase file."""
    from service.tables import EVENT_TYPES

    user, item = table.columns["user"], table.get("item")
    if kind == "purchases":
        order = table.get("order")
        if fmt == "online-retail" and order is not None:
            table.skip("missing_customer", user.isna())
            table.skip("cancellation", order.str.startswith("C").fillna(False))
        else:
            table.skip("missing_user", user.isna())
        if item is None:
            raise DataError(f"no item column in {report.source}")
        table.skip("missing_item", item.isna())
        table.skip("missing_timestamp", table.columns["timestamp"].isna())
        quantity = table.get("quantity")
        if quantity is not None:
            table.skip("non_positive_quantity", (quantity <= 0).to_numpy())
        if table.get("price") is not None:
            price_values = parse_numbers(table.columns["price"], "price", report.source)
            table.skip("non_positive_price", (price_values <= 0).to_numpy())
        if fmt == "online-retail":
            codes = item.fillna("")
            table.skip(
                "non_product_code",
                codes.isin(NON_PRODUCT_CODES) | codes.str.startswith(NON_PRODUCT_PREFIX),
            )
        types = pd.Series("purchase", index=user.index)
    else:
        types = table.columns["type"]
        table.refuse(user.isna().to_numpy(), "no user_id")
        table.refuse(table.columns["timestamp"].isna().to_numpy(), "no timestamp")
        table.refuse(
            ~types.isin(EVENT_TYPES).to_numpy(),
            lambda p: f"type {types.iloc[p]!r} is not one of {', '.join(EVENT_TYPES)}",
        )
        needs_item = (types != "sign_up").to_numpy()
        missing_item = np.ones(table.rows, dtype=bool) if item is None else item.isna().to_numpy()
        table.refuse(needs_item & missing_item, lambda p: f"a {types.iloc[p]} needs an item_id")
        not_purchase = (types != "purchase").to_numpy()
        for role in ("quantity", "price"):
            values = table.get(role)
            if values is not None:
                given = values.notna() & (values.astype(str).str.strip() != "")
                table.refuse(not_purchase & given.to_numpy(), _purchase_only(role, types))
    _check_ids(table, ("user", "item", "order", "client_event_id"))
    stamps = _check_times(table, now)
    quantity = _check_quantity(table)
    prices = _amounts(table)
    currencies = _currencies(table, prices, currency)
    if quantity is not None:
        table.refuse((quantity > 1_000_000).to_numpy(), "quantity above 1,000,000")
    return _Checked(types, stamps, quantity, prices, currencies)


def _prepare_events(
    kind: str,
    table: _Table,
    report: ImportReport,
    fmt: str,
    currency: str | None,
    now: datetime,
) -> Prepared:
    from service.activity.records import NewEvent

    checked = _check_events(kind, table, report, fmt, currency, now)
    types, stamps, quantity = checked.types, checked.stamps, checked.quantity
    prices, currencies = checked.prices, checked.currencies
    item = table.get("item")
    alive = np.flatnonzero(table.alive)

    def column(role: str) -> list[Any]:
        values = table.get(role)
        if values is None:
            return [None] * len(alive)
        return [_text(v) for v in values.iloc[alive].tolist()]

    users, items_, orders, keys = (column(r) for r in ("user", "item", "order", "client_event_id"))
    kinds = types.iloc[alive].tolist()
    kept = pd.DatetimeIndex(stamps.iloc[alive])
    moments = kept.tz_localize(UTC).to_pydatetime().tolist()
    isos = np.datetime_as_string(kept.to_numpy(dtype="datetime64[us]"), unit="us").tolist()
    counts = (
        quantity.iloc[alive].to_numpy(dtype="float64").tolist()
        if quantity is not None
        else [math.nan] * len(alive)
    )
    row_prices = [prices[p] for p in alive.tolist()] if prices is not None else [None] * len(alive)
    row_currencies = [currencies[p] for p in alive.tolist()]
    events: list[NewEvent] = []
    for user_p, kind_p, item_p, order_p, key, ts, iso, q, price, cur in zip(
        users,
        kinds,
        items_,
        orders,
        keys,
        moments,
        isos,
        counts,
        row_prices,
        row_currencies,
        strict=True,
    ):
        qty = None if kind_p != "purchase" else (1 if math.isnan(q) else int(q))
        if price is None:
            cur = None
        if key is None:  # the row's content, as _natural_key joins it (inlined: hot loop)
            text = (
                f"{user_p}\x1f{kind_p}\x1f{item_p or ''}\x1f{iso}\x1f{order_p or ''}"
                f"\x1f{'' if qty is None else qty}\x1f{'' if price is None else price}"
                f"\x1f{cur or ''}"
            )
            key = KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:40]
        events.append(
            NewEvent(
                user_id=user_p,
                type=kind_p,
                ts=ts,
                item_id=item_p,
                order_id=order_p,
                client_event_id=key,
                quantity=qty,
                price=price,
                currency=cur,
            )
        )
    prepared = Prepared(report=report, events=events)
    if kind == "purchases" and item is not None:
        prepared.new_items = _items_seen(table, alive)
    return prepared


def _purchase_only(role: str, types: pd.Series) -> Callable[[int], str]:
    def reason(position: int) -> str:
        return f"{role} is only for purchases, not {types.iloc[position]}"

    return reason


def _items_seen(table: _Table, alive: np.ndarray) -> list[dict[str, Any]]:
    """One catalogue row per item of a purchase file, with the name and category last seen."""
    frame = pd.DataFrame({"item_id": table.columns["item"].iloc[alive]})
    for role in ("name", "category"):
        values = table.get(role)
        if values is not None:
            frame[role] = values.iloc[alive].to_numpy()
    last = frame.drop_duplicates("item_id", keep="last")
    return [
        {k: _text(v) for k, v in row.items() if k == "item_id" or _text(v) is not None}
        for row in last.to_dict("records")
    ]


def _prepare_items(table: _Table, report: ImportReport, currency: str | None) -> Prepared:
    item = table.columns["item"]
    table.refuse(item.isna().to_numpy(), "no item_id")
    _check_ids(table, ("item", "category"))
    prices = _amounts(table)
    currencies = _currencies(table, prices, currency)
    stock = table.get("in_stock")
    flags: list[bool | None] | None = None
    if stock is not None:
        lowered = stock.str.lower()
        known = lowered.isna() | lowered.isin(_TRUE | _FALSE)
        table.refuse(~known.to_numpy(), lambda p: f"in_stock {stock.iloc[p]!r} is not true/false")
        flags = [None if pd.isna(v) else v in _TRUE for v in lowered.tolist()]
    rows: list[dict[str, Any]] = []
    for p in np.flatnonzero(table.alive).tolist():
        row: dict[str, Any] = {"item_id": str(item.iloc[p])}
        for role in ("name", "category"):
            values = table.get(role)
            if values is not None:
                row[role] = _text(values.iloc[p])
        if prices is not None:
            row["price"] = prices[p]
            row["currency"] = currencies[p] if prices[p] is not None else None
        if flags is not None:
            row["in_stock"] = flags[p]
        if table.extra:
            attributes = {
                c: table.columns[f"attr:{c}"].iloc[p]
                for c in table.extra
                if _text(table.columns[f"attr:{c}"].iloc[p]) is not None
            }
            row["attributes"] = attributes or None
        rows.append(row)
    return Prepared(report=report, items=rows)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _natural_key(parts: tuple[Any, ...]) -> str:
    """A deterministic client_event_id from a row's content: a re-run finds it stored.

    ``parts``: user, type, item, timestamp (ISO, naive UTC), order, quantity, price, currency.
    """
    text = "\x1f".join("" if part is None else str(part) for part in parts)
    return KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:40]


# --- writing ---------------------------------------------------------------------------------


def write(prepared: Prepared, database_url: str, *, batch_rows: int = BATCH_ROWS) -> ImportReport:
    """Store ``prepared`` in the service's database (migrated first), in batches.

    Raises:
        DataError: the database cannot be reached or written.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from service.activity.repository import Repository
    from service.db import make_engine, migrate

    report = prepared.report
    started = time.perf_counter()
    try:
        engine = make_engine(database_url)
    except Exception as exc:  # a malformed URL
        raise DataError(f"--database-url: {exc}") from None
    try:
        migrate(engine)
        _leave_out_erased(prepared, engine)
        repo = Repository(engine)
        for start in range(0, len(prepared.items), batch_rows):
            report.written += repo.import_items(prepared.items[start : start + batch_rows])
        for start in range(0, len(prepared.new_items), batch_rows):
            chunk = prepared.new_items[start : start + batch_rows]
            report.items_added += repo.import_items(chunk, replace=False)
        for start in range(0, len(prepared.events), batch_rows):
            stored, duplicates = repo.import_events(prepared.events[start : start + batch_rows])
            report.written += stored
            report.already_there += duplicates
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataError(f"cannot write to the database: {first}") from None
    finally:
        engine.dispose()
    report.seconds += time.perf_counter() - started
    return report


def _leave_out_erased(prepared: Prepared, engine: Any) -> None:
    """Drop the events of erased users (service.privacy's tombstones): an import of old history
    never brings back someone who asked to be forgotten. Counted under ``skipped``."""
    from service.privacy.repository import read_key, read_tombstones
    from service.privacy.tombstones import user_hash

    with engine.connect() as conn:
        key = read_key(conn)
        hashes = {h for _, h in read_tombstones(conn)}
    if key is None or not hashes or not prepared.events:
        return
    erased = {
        user for user in {e.user_id for e in prepared.events} if user_hash(key, user) in hashes
    }
    if not erased:
        return
    kept = [e for e in prepared.events if e.user_id not in erased]
    report = prepared.report
    report.skipped = {**report.skipped, "erased_users": len(prepared.events) - len(kept)}
    prepared.events = kept


def import_file(
    kind: str,
    path: Path,
    database_url: str,
    *,
    fmt: str = "generic",
    columns: str | None = None,
    currency: str | None = None,
    skip_bad: bool = False,
    batch_rows: int = BATCH_ROWS,
    now: datetime | None = None,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> ImportReport:
    """Read, check and store one file; the report's seconds cover the whole import."""
    started = time.perf_counter()
    prepared = prepare(
        kind,
        path,
        fmt=fmt,
        columns=columns,
        currency=currency,
        now=now,
        skip_bad=skip_bad,
        options=options,
    )
    prepared.report.seconds = time.perf_counter() - started
    return write(prepared, database_url, batch_rows=batch_rows)
