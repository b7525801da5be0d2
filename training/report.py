"""Order lines for ``recoffer report`` from a purchase file: what ``recoffer import`` would store.

The file goes through the import's own preparation (``training.data.imports.prepare``: the
readers, the ``online-retail`` cleaning rules, the checks of ids, times and exact amounts), and
a line the import would store once (the same natural key twice) is read once. So a report on a
file and a report on the database that file was imported into read the same lines, and the
core (``service.analytics.loyalty``) gives the same figures to the last digit.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from service.analytics.loyalty import Line, Period
from service.analytics.orders import ALONE
from training.data.files import DEFAULT_OPTIONS, ReadOptions
from training.data.imports import prepare


def file_lines(
    path: Path,
    *,
    fmt: str = "generic",
    columns: str | None = None,
    currency: str | None = None,
    skip_bad: bool = False,
    options: ReadOptions = DEFAULT_OPTIONS,
) -> list[Line]:
    """The purchase lines of ``path`` as the import prepares them, each natural key once.

    Raises:
        DataError: the file cannot be used, or has bad rows and not ``skip_bad``.
    """
    prepared = prepare(
        "purchases",
        Path(path),
        fmt=fmt,
        columns=columns,
        currency=currency,
        skip_bad=skip_bad,
        options=options,
    )
    seen: set[str] = set()
    lines = []
    for event in prepared.events:
        key = event.client_event_id or ""  # prepare gives every row its natural key
        if key in seen:
            continue
        seen.add(key)
        price = event.price
        lines.append(
            Line(
                user_id=event.user_id,
                order_key=event.order_id if event.order_id is not None else f"{ALONE}{key}",
                ts=event.ts,
                item_id=event.item_id,
                amount=None if price is None else price * (event.quantity or 1),
                currency=event.currency,
            )
        )
    return lines


def report_figures(
    path: Path,
    *,
    period: Period = "month",
    since: datetime | None = None,
    until: datetime | None = None,
    fmt: str = "generic",
    columns: str | None = None,
    currency: str | None = None,
    skip_bad: bool = False,
    options: ReadOptions = DEFAULT_OPTIONS,
    reference: bool = False,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``{"loyalty": ..., "cohorts": ...}`` of the purchase file ``path`` (the core's dicts).

    On columns (``service.analytics.columns``: the same figures to the last digit, in a few
    integer arrays); with ``reference`` (or amounts too large for 62 bits) through the
    reference core on ``Line`` objects. ``timings``, when given, receives the seconds spent
    reading and computing.

    Raises:
        DataError: the file cannot be used, or has bad rows and not ``skip_bad``.
    """
    from service.analytics import columns as fast
    from service.analytics import loyalty as core
    from training.data.imports import purchase_columns

    started = time.perf_counter()
    figures: dict[str, Any]
    read = started
    if not reference:
        try:
            frame = purchase_columns(
                path, fmt=fmt, columns=columns, currency=currency, skip_bad=skip_bad,
                options=options,
            )  # fmt: skip
            read = time.perf_counter()
            encoded = fast.encode(frame)
            del frame
            figures = {
                "loyalty": fast.loyalty(encoded, period, since, until),
                "cohorts": fast.cohorts(encoded, since, until),
            }
        except OverflowError:
            reference = True
    if reference:
        lines = file_lines(
            path, fmt=fmt, columns=columns, currency=currency, skip_bad=skip_bad, options=options
        )
        read = time.perf_counter()
        figures = {
            "loyalty": core.loyalty(lines, period, since, until),
            "cohorts": core.cohorts(lines, since, until),
        }
    if timings is not None:
        timings.update(read=read - started, metrics=time.perf_counter() - read)
    return figures
