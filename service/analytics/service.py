"""The API's side of the loyalty metrics: the database's order lines on columns.

``Analytics`` reads the purchase lines straight into columns (``columns.read_columns``) and
computes the figures with ``service.analytics.columns`` (the same figures to the last digit as
the pure core of ``loyalty``, which a test checks); numpy and pandas are imported at the first
such request, not when a worker starts. Amounts too large for 62-bit integers go through the
pure core on ``Line`` objects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from service.analytics.loyalty import Period, cohorts, loyalty, next_start, period_start, report_end
from service.analytics.orders import check_segment, read_lines
from service.analytics.value import read_summary, value_of
from service.errors import InvalidInput

MAX_PERIODS = 1_000  # a report longer than this is refused (about 19 years of weeks)
# the dates a range may name: well inside what datetime can hold after any offset and a period
FIRST_YEAR, LAST_YEAR = 1900, 9000


def check_range(period: Period, since: datetime | None, until: datetime | None) -> None:
    """Refuse dates outside :data:`FIRST_YEAR` .. :data:`LAST_YEAR`, ``until`` before
    ``since`` and ranges of more than :data:`MAX_PERIODS` periods (without ``until``, to now).

    Raises:
        InvalidInput: naming ``until`` or ``since``.
    """
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and not FIRST_YEAR <= moment.year <= LAST_YEAR:
            raise InvalidInput(name, f"must be within the years {FIRST_YEAR} to {LAST_YEAR}")
    if since is None:
        return
    until = until or datetime.now(UTC)  # no end given: the report runs to the last order
    since, until = (m.replace(tzinfo=UTC) if m.tzinfo is None else m for m in (since, until))
    if until < since:
        raise InvalidInput("until", "is before since")
    start, count = period_start(since, period), 0
    while start <= until:
        start, count = next_start(start, period), count + 1
        if count > MAX_PERIODS:
            raise InvalidInput("since", f"the range spans more than {MAX_PERIODS:,} {period}s")


class Analytics:
    """Loyalty metrics and cohorts over the service's purchase events."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def loyalty(
        self,
        period: Period,
        since: datetime | None,
        until: datetime | None,
        segment: str | None = None,
    ) -> dict[str, Any]:
        check_range(period, since, until)
        check_segment(segment)
        end = report_end(period, until)
        from service.analytics import columns  # numpy, pandas: not at a worker's start

        try:
            frame = columns.read_columns(self.engine, end, segment)
            return columns.loyalty(frame, period, since, until)
        except OverflowError:
            return loyalty(read_lines(self.engine, end, segment), period, since, until)

    def cohorts(
        self, since: datetime | None, until: datetime | None, segment: str | None = None
    ) -> dict[str, Any]:
        check_range("month", since, until)
        check_segment(segment)
        end = report_end("month", until)
        from service.analytics import columns  # numpy, pandas: not at a worker's start

        try:
            return columns.cohorts(columns.read_columns(self.engine, end, segment), since, until)
        except OverflowError:
            return cohorts(read_lines(self.engine, end, segment), since, until)

    def customer_value(self, limit: int) -> dict[str, Any]:
        """The latest ``recoffer clv --write`` run: summary and the ``limit`` top customers."""
        return read_summary(self.engine, limit)

    def value_of(self, user_id: str) -> dict[str, Any] | None:
        """One user's stored prediction, None without one."""
        return value_of(self.engine, user_id)
