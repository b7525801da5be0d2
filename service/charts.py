"""Charts as inline SVG and HTML, drawn on the server.

Used by the console (``/console``) and by the HTML report of ``recoffer report``: no script, no
font and no chart library is fetched from anywhere, so both work air-gapped. Every function
returns a fragment of HTML (a ``str`` whose text is already escaped) to put into a page as is.

Readable without colour alone: each series of a line chart has its own dash pattern and marker
shape besides its colour, a legend names them, every point carries its value in a ``<title>``
(shown on hover and read by screen readers), and the cohort grid prints its numbers in the cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["CSS", "Series", "bar_chart", "heat_table", "line_chart", "percent", "plain"]

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), each series
# also with its own dash pattern and marker: colour is never the only cue.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 2 1 2")
_MARKERS = ("circle", "square", "triangle", "diamond", "circle", "square", "triangle")


# the charts' styles: served by the console as /console/charts.css, inlined by the HTML report
CSS = "\n".join(
    [
        ".chart { margin: 0 0 1.5rem; max-width: 100%; }",
        ".chart figcaption { font-weight: 600; margin-bottom: 0.25rem; }",
        # a box wider than the screen scrolls sideways, with a shadow on the side that has more
        # (backgrounds that scroll with the content cover the shadows at either end)
        ".chart-scroll, .table-scroll { overflow-x: auto; background:"
        " linear-gradient(to right, #fff 30%, rgba(255, 255, 255, 0)) left / 2rem 100% no-repeat"
        " local, linear-gradient(to left, #fff 30%, rgba(255, 255, 255, 0)) right / 2rem 100%"
        " no-repeat local, radial-gradient(farthest-side at 0 50%, rgba(0, 0, 0, 0.3),"
        " rgba(0, 0, 0, 0)) left / 0.75rem 100% no-repeat scroll, radial-gradient(farthest-side"
        " at 100% 50%, rgba(0, 0, 0, 0.3), rgba(0, 0, 0, 0)) right / 0.75rem 100% no-repeat"
        " scroll; }",
        # below 30rem the chart scrolls sideways rather than shrinking its text unreadably
        ".chart-scroll > svg { width: 100%; min-width: 30rem; height: auto; display: block; }",
        ".chart .grid { stroke: #d0d0d0; stroke-width: 1; }",
        ".chart .axis, .chart .value { font: 11px system-ui, sans-serif; fill: #333; }",
        ".chart .chart-empty { font: 14px system-ui, sans-serif; fill: #555; color: #555; }",
        ".chart .legend { list-style: none; padding: 0; margin: 0.25rem 0 0;"
        " display: flex; flex-wrap: wrap; gap: 0.25rem 1rem; font-size: 0.9rem; }",
        ".chart .legend svg { display: inline; width: 36px; vertical-align: middle; }",
        "table.heat { border-collapse: collapse; font-size: 0.85rem; }",
        "table.heat th, table.heat td { padding: 0.2rem 0.45rem; text-align: right;"
        " border: 1px solid #e0e0e0; white-space: nowrap; }",
        *(
            f"table.heat td.shade-{n} {{ background: rgba(0, 114, 178, {n / 10:.1f});"
            f" color: {'#fff' if n > 5 else '#000'}; }}"
            for n in range(11)
        ),
    ]
)


@dataclass(frozen=True, slots=True)
class Series:
    """One line: its name in the legend and a value (or ``None``: no figure) per x label."""

    name: str
    values: Sequence[float | None]


def plain(value: float) -> str:
    """A figure as printed on an axis or in a tooltip: thousands separated, at most 2 decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def percent(value: float) -> str:
    """A share (0.25) as a percentage ("25.0%")."""
    return f"{value * 100:.1f}%"


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values from ``low`` to at least ``high``."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [math.floor(low / step) * step]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _marker(shape: str, x: float, y: float, colour: str, label: str) -> str:
    tip = f"<title>{escape(label)}</title>"
    if shape == "square":
        return (
            f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" '
            f'fill="{colour}">{tip}</rect>'
        )
    if shape == "triangle":
        points = f"{x:.1f},{y - 4.5:.1f} {x - 4.5:.1f},{y + 3.5:.1f} {x + 4.5:.1f},{y + 3.5:.1f}"
        return f'<polygon points="{points}" fill="{colour}">{tip}</polygon>'
    if shape == "diamond":
        points = f"{x:.1f},{y - 5:.1f} {x - 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x + 5:.1f},{y:.1f}"
        return f'<polygon points="{points}" fill="{colour}">{tip}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">{tip}</circle>'


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    fmt: Callable[[float], str] = plain,
    width: int = 640,
    height: int = 260,
) -> str:
    """Lines over the x ``labels`` (periods, days), one per series, with a legend.

    A gap in a series (``None``) breaks its line. With no figure at all the chart says so in words.
    """
    if any(len(s.values) != len(labels) for s in series):
        raise ValueError("every series needs one value per label")
    figures = [v for s in series for v in s.values if v is not None]
    head = (
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption><div class="chart-scroll">'
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">'
    )
    if not figures or not labels:
        return (
            head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            'class="chart-empty">No figures yet</text></svg></div></figure>'
        )
    left, right, top, bottom = 64, 40, 12, 40
    ticks = _ticks(min(0.0, *figures), max(figures))
    low, high = ticks[0], ticks[-1]
    span_x = max(len(labels) - 1, 1)

    def x_of(i: int) -> float:
        if len(labels) == 1:
            return left + (width - left - right) / 2
        return left + i * (width - left - right) / span_x

    def y_of(value: float) -> float:
        return top + (high - value) * (height - top - bottom) / (high - low)

    parts = [head]
    for tick in ticks:
        y = y_of(tick)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{escape(fmt(tick))}</text>"
        )
    every = max(1, -(-len(labels) // 8))  # at most about 8 x labels, evenly spaced
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text x="{x_of(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="axis">{escape(label)}</text>'
            )
    for n, line in enumerate(series):
        colour, dash, shape = (
            _COLOURS[n % len(_COLOURS)],
            _DASHES[n % len(_DASHES)],
            _MARKERS[n % len(_MARKERS)],
        )
        runs: list[list[str]] = [[]]
        for i, value in enumerate(line.values):
            if value is None:
                runs.append([])
                continue
            runs[-1].append(f"{x_of(i):.1f},{y_of(value):.1f}")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for run in runs:
            if len(run) > 1:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" '
                    f'stroke-width="2"{dash_attr}/>'
                )
        for i, value in enumerate(line.values):
            if value is not None:
                tip = f"{line.name}, {labels[i]}: {fmt(value)}"
                parts.append(_marker(shape, x_of(i), y_of(value), colour, tip))
    parts.append("</svg></div>")
    parts.append('<ul class="legend">')
    for n, line in enumerate(series):
        colour, dash, shape = (
            _COLOURS[n % len(_COLOURS)],
            _DASHES[n % len(_DASHES)],
            _MARKERS[n % len(_MARKERS)],
        )
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            '<li><svg viewBox="0 0 36 12" width="36" height="12" aria-hidden="true">'
            f'<line x1="0" x2="36" y1="6" y2="6" stroke="{colour}" stroke-width="2"{dash_attr}/>'
            f"{_marker(shape, 18, 6, colour, line.name)}</svg> {escape(line.name)}</li>"
        )
    parts.append("</ul></figure>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    fmt: Callable[[float], str] = plain,
    width: int = 640,
) -> str:
    """Horizontal bars, one per (label, value), each with its value printed beside it."""
    head = f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
    if not bars:
        return head + '<p class="chart-empty">No figures yet</p></figure>'
    row, left, right = 24, 150, 90
    height = row * len(bars) + 8
    top = max((value for _, value in bars), default=0.0) or 1.0
    parts = [
        head,
        f'<div class="chart-scroll"><svg viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
    ]
    for i, (label, value) in enumerate(bars):
        y = 4 + i * row
        length = max(value, 0) / top * (width - left - right)
        parts.append(
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" class="axis">'
            f"{escape(label)}</text>"
            f'<rect x="{left}" y="{y + 3}" width="{length:.1f}" height="{row - 8}" '
            f'fill="{_COLOURS[0]}"><title>{escape(label)}: {escape(fmt(value))}</title></rect>'
            f'<text x="{left + length + 6:.1f}" y="{y + 15}" class="value">'
            f"{escape(fmt(value))}</text>"
        )
    parts.append("</svg></div></figure>")
    return "".join(parts)


def heat_table(
    rows: Sequence[tuple[str, Sequence[float | None]]],
    columns: Sequence[str],
    *,
    title: str,
    fmt: Callable[[float], str] = percent,
    row_header: str = "",
    tips: Sequence[Sequence[str | None]] | None = None,
) -> str:
    """A grid of shares (0-1) such as the cohort matrix: each cell prints its figure and is
    shaded by it (darker is more); an empty cell (``None``) has no figure. ``tips``, one per
    cell where given, becomes the cell's ``title`` (shown on hover: e.g. the counts behind a
    share)."""
    parts = [
        f'<figure class="chart heat"><figcaption>{escape(title)}</figcaption>'
        '<div class="table-scroll"><table class="heat"><thead><tr>'
        f'<th scope="col">{escape(row_header)}</th>'
    ]
    parts.extend(f'<th scope="col">{escape(column)}</th>' for column in columns)
    parts.append("</tr></thead><tbody>")
    for r, (label, values) in enumerate(rows):
        parts.append(f'<tr><th scope="row">{escape(label)}</th>')
        for c, value in enumerate(values):
            tip = tips[r][c] if tips is not None and c < len(tips[r]) else None
            title = "" if tip is None else f' title="{escape(tip)}"'
            if value is None:
                parts.append(f'<td class="none"{title}></td>')
                continue
            shade = round(min(max(value, 0.0), 1.0) * 10)  # classes, not style: CSP-safe
            parts.append(f'<td class="shade-{shade}"{title}>{escape(fmt(value))}</td>')
        parts.append("</tr>")
    parts.append("</tbody></table></div></figure>")
    return "".join(parts)
