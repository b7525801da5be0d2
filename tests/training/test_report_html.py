"""``recoffer report --html``: one self-contained, well-formed page holding every figure of the
JSON report, written atomically; a path that cannot be written is one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.analytics.html import FIGURES
from training.cli import app as cli

# two currencies, an order of two lines, orders without an order id, a line without a price
PURCHASES = """user_id,item_id,timestamp,quantity,price,currency,order_id
d,x,2023-12-31T23:59:00,1,,,D1
a,x,2024-01-05T10:00:00,1,10.00,EUR,A1
b,y,2024-01-20T10:00:00,1,20.00,EUR,B1
c,z,2024-02-03T10:00:00,1,7.00,GBP,
a,y,2024-02-11T09:00:00,1,3.50,EUR,A2
a,x,2024-02-10T09:00:00,2,5.00,EUR,A2
c,x,2024-02-25T10:00:00,1,1.00,GBP,
b,y,2024-03-01T00:00:00,3,6.6667,EUR,B2
e,x,2024-03-10T10:00:00,1,1.00,EUR,E1
b,y,2024-04-02T10:00:00,1,99.00,EUR,B3
"""


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["report", *args])


@pytest.fixture
def purchases(tmp_path: Path) -> Path:
    path = tmp_path / "purchases.csv"
    path.write_text(PURCHASES)
    return path


@pytest.fixture(params=["month", "week"])
def page(
    request: pytest.FixtureRequest, purchases: Path, tmp_path: Path
) -> tuple[ET.Element, str, dict[str, Any]]:
    target = tmp_path / "report.html"
    args = ["--data", str(purchases), f"--period={request.param}", "--json"]
    result = run(*args, "--html", str(target))
    assert result.exit_code == 0, result.output
    text = target.read_text(encoding="utf-8")
    root = ET.fromstring(text)  # well-formed: raises on anything else
    report: dict[str, Any] = json.loads(result.stdout)
    return root, text, report


def test_the_page_holds_every_figure_of_each_period(
    page: tuple[ET.Element, str, dict[str, Any]],
) -> None:
    root, _, report = page
    table = root.find(".//table[@class='figures']")
    assert table is not None
    heads = [th.text for th in table.iter("th") if th.get("scope") == "col"]
    rows = {tr.get("data-period"): tr for tr in table.iter("tr") if tr.get("data-period")}
    periods = report["loyalty"]["periods"]
    assert list(rows) == [p["period"] for p in periods]
    for p in periods:
        cells = dict(zip(heads[1:], rows[p["period"]].findall("td"), strict=True))
        for key, name, kind in FIGURES:
            value, cell = p[key], cells[name]
            if value is None:
                assert cell.get("data-value") == ""
            elif kind == "count":
                assert cell.get("data-value") == str(value)
                assert cell.text == f"{value:,}"
            else:
                assert float(cell.get("data-value") or "nan") == value  # exact, to the last digit
        for currency, amount in p["average_order_value"].items():
            assert cells[f"average order value {currency}"].text == amount
        for currency, ltv in p["lifetime_value"].items():
            assert cells[f"LTV customers {currency}"].get("data-value") == str(ltv["customers"])
            assert cells[f"LTV mean {currency}"].text == ltv["mean"]
            assert cells[f"LTV median {currency}"].text == ltv["median"]
    march = next((p for p in periods if p["period"] == "2024-03-01"), None)
    if march is not None:  # the month report: B2's exact 20.0001 shows as the API gives it
        assert march["average_order_value"] == {"EUR": "10.5000"}


def test_the_page_has_the_charts_and_the_cohort_grid(
    page: tuple[ET.Element, str, dict[str, Any]],
) -> None:
    root, _, report = page
    captions = [c.text for c in root.iter("figcaption")]
    for title in (
        "Retention and churn rates",
        "Repurchase and repeat-customer rates",
        "Purchase frequency",
        "Average order value",
        "Upsell rate",
        "Historical lifetime value (to period end)",
    ):
        assert title in captions
    svg = "{http://www.w3.org/2000/svg}"
    tips = {t.text for t in root.iter(f"{svg}title")}
    first = report["loyalty"]["periods"][1]
    assert f"customers (E), {first['period']}: {first['customers_at_end']:,}" in tips
    grid = root.find(".//table[@class='heat']")
    assert grid is not None
    matrix = report["cohorts"]
    body = grid.find("tbody")
    assert body is not None
    rows = body.findall("tr")
    assert len(rows) == len(matrix["cohorts"])
    for tr, cohort in zip(rows, matrix["cohorts"], strict=True):
        head = tr.find("th")
        assert head is not None
        assert head.text == f"{cohort['cohort']} ({cohort['size']:,})"
        cells = tr.findall("td")
        assert len(cells) == len(matrix["months"])
        for cell, share, active in zip(cells, cohort["share"], cohort["active"], strict=False):
            if share is not None:
                assert cell.text == f"{share * 100:.1f}%"
            assert cell.get("title") == f"{active:,} of {cohort['size']:,}"


def test_the_page_loads_nothing_from_anywhere(
    page: tuple[ET.Element, str, dict[str, Any]],
) -> None:
    root, text, _ = page
    names = {element.tag.rsplit("}", 1)[-1] for element in root.iter()}
    assert not names & {"script", "link", "img", "iframe", "object", "embed", "image", "use"}
    for element in root.iter():
        for attribute, value in element.attrib.items():
            assert attribute not in ("src", "href", "srcset", "action"), (element.tag, value)
    assert "url(" not in text
    assert "@import" not in text
    # the only URL is the SVG namespace's name, which nothing fetches
    assert set(re.findall(r"https?://[^\s\"'<>)]*", text)) == {"http://www.w3.org/2000/svg"}
    assert "xmlns" in text


def test_the_page_is_written_atomically(
    purchases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("the previous report")
    replaced: list[tuple[str, str]] = []
    real = os.replace

    def spy(src: str, dst: str) -> None:
        replaced.append((str(src), str(dst)))
        assert Path(src).parent == tmp_path  # written beside the target, then renamed
        assert target.read_text() == "the previous report"  # untouched until the rename
        assert "</html>" in Path(src).read_text()
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    result = run("--data", str(purchases), "--html", str(target))
    assert result.exit_code == 0, result.output
    assert len(replaced) == 1
    assert replaced[0][1] == str(target)
    assert target.read_text().startswith("<!DOCTYPE html>")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert {p.name for p in tmp_path.iterdir()} == {"purchases.csv", "report.html"}


def test_a_failed_write_leaves_the_previous_page_and_no_temporary(
    purchases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("the previous report")

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    result = run("--data", str(purchases), "--html", str(target))
    assert result.exit_code == 2, result.output
    assert "--html: cannot write" in result.stderr
    assert target.read_text() == "the previous report"
    assert {p.name for p in tmp_path.iterdir()} == {"purchases.csv", "report.html"}


@pytest.mark.parametrize(
    ("where", "message"),
    [("missing/report.html", "--html: cannot write"), (".", "--html")],
)
def test_a_bad_html_path_is_one_line_and_exit_2(
    purchases: Path, tmp_path: Path, where: str, message: str
) -> None:
    result = run("--data", str(purchases), "--html", str(tmp_path / where))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert not (tmp_path / "missing").exists()


def test_the_database_page_shows_the_file_page_figures(purchases: Path, tmp_path: Path) -> None:
    from training.data.imports import import_file

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    import_file("purchases", purchases, url)
    pages = {}
    for name, source in (("file", ["--data", str(purchases)]), ("db", ["--database-url", url])):
        result = run(*source, "--html", str(tmp_path / f"{name}.html"))
        assert result.exit_code == 0, result.output
        root = ET.fromstring((tmp_path / f"{name}.html").read_text())
        pages[name] = [
            ET.tostring(t) for t in root.iter("table")
        ]  # the figures and the cohort grid
    assert pages["file"] == pages["db"]
    assert len(pages["file"]) == 2


def test_the_page_never_shows_a_database_password() -> None:
    from training.cli.report import _shown_url

    shown = _shown_url("postgresql+psycopg://shop:s3cret@db.internal:5432/recoffer")
    assert "s3cret" not in shown
    assert "db.internal" in shown
