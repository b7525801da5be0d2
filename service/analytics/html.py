"""The loyalty report as one self-contained HTML page (``recoffer report --html``).

Charts of the per-period metrics (``service.charts``: inline SVG), a table of the exact
figures, and the cohort matrix as a shaded grid with its numbers. The page loads nothing: no
script, no font, no stylesheet or image from anywhere (its CSS is inline), so it can be mailed
or opened air-gapped. It is well-formed XML as well as HTML. Standard library only, so the
console can render the same page.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from service.charts import CSS, Series, heat_table, line_chart, percent, plain

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
  margin: 0 auto; padding: 1rem; max-width: 72rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #ccc; }
p.meta { color: #444; margin: 0 0 1rem; }
.charts { display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 30rem), 1fr)); }
.charts > * { min-width: 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: .2rem .45rem; border: 1px solid #ddd; text-align: right; white-space: nowrap; }
th[scope="row"], thead th:first-child { text-align: left; }
thead th { background: #f3f3f3; }
td.none { background: #fafafa; }
@media (max-width: 40rem) { body { padding: .5rem; } .charts { grid-template-columns: 1fr; } }
"""

# (key in a period, column header, kind): kind is "count", "rate" or "ratio"
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("customers_at_start", "customers at start (S)", "count"),
    ("new_customers", "new (N)", "count"),
    ("customers_at_end", "customers at end (E)", "count"),
    ("retained", "retained", "count"),
    ("reactivated", "reactivated", "count"),
    ("retention", "retention", "rate"),
    ("churn", "churn", "rate"),
    ("orders", "orders", "count"),
    ("repeat_orders", "repeat orders", "count"),
    ("repurchase_rate", "repurchase rate", "rate"),
    ("repeat_customers", "repeat customers", "count"),
    ("repeat_customer_rate", "repeat-customer rate", "rate"),
    ("purchase_frequency", "purchase frequency", "ratio"),
    ("multi_product_customers", "multi-product customers", "count"),
    ("single_product_customers", "single-product customers", "count"),
    ("upsell_rate", "upsell rate", "rate"),
)


def _cell(value: float | None, kind: str) -> str:
    """A table cell: the figure readable, and exact in ``data-value`` (and on hover)."""
    if value is None:
        return '<td data-value="">-</td>'
    if kind == "count":
        return f'<td data-value="{int(value)}">{int(value):,}</td>'
    exact = escape(repr(float(value)))
    shown = f"{value:.2%}" if kind == "rate" else f"{value:.4f}"
    return f'<td data-value="{exact}" title="{exact}">{escape(shown)}</td>'


def _currencies(periods: Sequence[dict[str, Any]], key: str) -> list[str]:
    return sorted({c for p in periods for c in p[key]})


def _series(periods: Sequence[dict[str, Any]], key: str, name: str) -> Series:
    return Series(name, [p[key] for p in periods])


def _money_series(
    periods: Sequence[dict[str, Any]], key: str, currency: str, stat: str | None, name: str
) -> Series:
    """An amount per period (``key``'s value in ``currency``, or its ``stat``), as a float."""
    values: list[float | None] = []
    for p in periods:
        amount = p[key].get(currency)
        if stat is not None and amount is not None:
            amount = amount[stat]
        values.append(None if amount is None else float(amount))
    return Series(name, values)


def charts(report: dict[str, Any]) -> str:
    """The per-period metrics as line charts (rates in percent, amounts per currency)."""
    periods = report["periods"]
    labels = [f"{p['period']} (so far)" if p.get("partial") else p["period"] for p in periods]
    s = _series
    parts = [
        line_chart(
            labels,
            [s(periods, "customers_at_end", "customers (E)"), s(periods, "new_customers", "new")],
            title="Customers",
            fmt=plain,
        ),
        line_chart(
            labels,
            [s(periods, "retention", "retention"), s(periods, "churn", "churn")],
            title="Retention and churn rates",
            fmt=percent,
        ),
        line_chart(
            labels,
            [
                s(periods, "repurchase_rate", "repurchase rate"),
                s(periods, "repeat_customer_rate", "repeat-customer rate"),
            ],
            title="Repurchase and repeat-customer rates",
            fmt=percent,
        ),
        line_chart(
            labels,
            [s(periods, "purchase_frequency", "orders per customer")],
            title="Purchase frequency",
            fmt=plain,
        ),
        line_chart(
            labels,
            [
                _money_series(periods, "average_order_value", c, None, c)
                for c in _currencies(periods, "average_order_value")
            ],
            title="Average order value",
            fmt=plain,
        ),
        line_chart(
            labels, [s(periods, "upsell_rate", "upsell rate")], title="Upsell rate", fmt=percent
        ),
    ]
    lifetime: list[Series] = []
    for c in _currencies(periods, "lifetime_value"):
        for stat in ("mean", "median"):
            lifetime.append(_money_series(periods, "lifetime_value", c, stat, f"{stat} {c}"))
    parts.append(
        line_chart(labels, lifetime, title="Historical lifetime value (to period end)", fmt=plain)
    )
    return '<div class="charts">' + "".join(parts) + "</div>"


def figures_table(report: dict[str, Any]) -> str:
    """Every figure of every period, exactly (rates also in ``data-value``)."""
    periods = report["periods"]
    orders = _currencies(periods, "average_order_value")
    lifetime = _currencies(periods, "lifetime_value")
    heads = ["period", *(name for _, name, _ in FIGURES)]
    heads += [f"average order value {c}" for c in orders]
    for c in lifetime:
        heads += [f"LTV customers {c}", f"LTV mean {c}", f"LTV median {c}"]
    parts = [
        '<div class="table-scroll"><table class="figures"><thead><tr>',
        *(f'<th scope="col">{escape(h)}</th>' for h in heads),
        "</tr></thead><tbody>",
    ]
    for p in periods:
        parts.append(
            f'<tr data-period="{escape(p["period"])}"><th scope="row" '
            f'title="{escape(p["start"])} to {escape(p["end"])}">{escape(p["period"])}'
            f"{' <small>(so far: the data stops inside it)</small>' if p.get('partial') else ''}"
            "</th>"
        )
        parts.extend(_cell(p[key], kind) for key, _, kind in FIGURES)
        for c in orders:
            amount = p["average_order_value"].get(c)
            parts.append(f'<td data-value="{escape(amount or "")}">{escape(amount or "-")}</td>')
        for c in lifetime:
            value = p["lifetime_value"].get(c)
            if value is None:
                parts.append('<td data-value="">-</td>' * 3)
                continue
            parts.append(_cell(value["customers"], "count"))
            parts.extend(
                f'<td data-value="{escape(value[k])}">{escape(value[k])}</td>'
                for k in ("mean", "median")
            )
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def cohort_grid(matrix: dict[str, Any]) -> str:
    """The cohort matrix: one row per month of first order, the share active k months later."""
    rows = matrix["cohorts"]
    width = len(matrix["months"])
    grid: list[tuple[str, Sequence[float | None]]] = []
    tips: list[list[str | None]] = []
    for row in rows:
        shares = list(row["share"])
        grid.append((f"{row['cohort']} ({row['size']:,})", shares + [None] * (width - len(shares))))
        tips.append([f"{n:,} of {row['size']:,}" for n in row["active"]])
    return heat_table(
        grid,
        [f"m{k}" for k in range(width)],
        title="Share of each cohort ordering k months after its first month",
        row_header="first order (customers)",
        tips=tips,
    )


def report_page(
    loyalty: dict[str, Any], cohorts: dict[str, Any], *, source: str, generated: str
) -> str:
    """The whole page: ``loyalty`` and ``cohorts`` are the JSON of the two API endpoints."""
    period = loyalty["period"]
    count = len(loyalty["periods"])
    span = (
        f"{loyalty['periods'][0]['period']} to {loyalty['periods'][-1]['period']}"
        if count
        else "no orders"
    )
    body = [
        f"<h1>Loyalty report per {escape(period)} (UTC)</h1>",
        f'<p class="meta">{escape(source)} &#183; {count:,} {escape(period)}s, {escape(span)} '
        f"&#183; generated {escape(generated)} &#183; definitions: README, "
        "&#8220;Loyalty metrics&#8221;</p>",
        "<h2>Per period</h2>",
        charts(loyalty),
        "<h2>The figures</h2>",
        figures_table(loyalty),
        "<h2>Cohort retention</h2>",
        cohort_grid(cohorts),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>Loyalty report per {escape(period)}</title><style>{STYLE}{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
