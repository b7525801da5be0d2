"""The segment table of Online Retail: customers per lifecycle stage and loyalty type.

Online Retail's purchases (``../shared/data/online-retail``) imported with ``recoffer import
purchases --format online-retail --currency GBP`` into a fresh SQLite database, then
``recoffer segments --as-of`` the day after the last invoice (the log ends in December 2011;
as of today every customer would be lapsed), with the default thresholds (README, "Segments").
The log has purchases only: no views, no coupons, so engagement comes from active days alone
and nobody can be mercenary. Writes ``benchmarks/results/segments_online_retail.json``.

    python -m benchmarks.segments_online_retail
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from typing import Any

from benchmarks.common import PYTHON, ROOT, save, this_command
from benchmarks.harness import fresh_sqlite

DATA = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"


def _cli(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [PYTHON, "-m", "training.cli", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"recoffer {args[0]} failed: {done.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def measure() -> dict[str, Any]:
    from sqlalchemy import func, select

    from service.db import make_engine
    from service.tables import UTCDateTime, events

    with fresh_sqlite("recoffer-segments-or") as url:
        imported = _cli(
            "import", "purchases", str(DATA), "--format", "online-retail", "--currency", "GBP",
            "--skip-bad-rows", "--database-url", url,
        )  # fmt: skip
        engine = make_engine(url)
        with engine.connect() as conn:
            last = conn.execute(select(func.max(events.c.ts))).scalar_one()
        engine.dispose()
        last_at = UTCDateTime().process_result_value(last, engine.dialect)
        assert last_at is not None
        as_of = (last_at + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        counts = _cli("segments", "--database-url", url, "--as-of", as_of.isoformat())
    return {
        "imported": {k: imported.get(k) for k in ("rows_read", "written", "skipped", "bad_rows")},
        "last_purchase_at": last_at.isoformat(),
        **counts,
    }


def render(doc: dict[str, Any]) -> list[str]:
    kinds = list(doc["loyalty_types"])
    out = [
        "## Segments on Online Retail",
        "",
        f"Measured {doc['date']} with `{doc['command']}`: Online Retail's purchases imported "
        "(`recoffer import purchases --format online-retail --currency GBP --skip-bad-rows`), "
        f"then `recoffer segments --as-of {doc['as_of'][:10]}` (the day after the last invoice, "
        f"{doc['last_purchase_at'][:10]}) with the default thresholds of the README's "
        '"Segments" section. The log has purchases only (no views, no coupons): engagement '
        "comes from active days alone and nobody can be `mercenary`.",
        "",
        f"{doc['users']:,} customers; the shop's typical interval between orders (median of "
        f"the customers with 3 orders or more) is {doc['typical_interval_days']:.1f} days.",
        "",
        "| stage | " + " | ".join(kinds) + " | total |",
        "|---|" + "---:|" * (len(kinds) + 1),
    ]
    for stage, total in doc["stages"].items():
        cells = " | ".join(f"{doc['matrix'][stage][k]:,}" for k in kinds)
        out.append(f"| {stage} | {cells} | {total:,} |")
    out.append(
        "| total | "
        + " | ".join(f"{n:,}" for n in doc["loyalty_types"].values())
        + f" | {doc['users']:,} |"
    )
    out.append("")
    return out


def main() -> None:
    if not DATA.is_file():
        raise SystemExit(f"Online Retail not found at {DATA}")
    result = measure()
    path = save("segments_online_retail", this_command(), result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
