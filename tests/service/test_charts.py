"""The console's and the HTML report's charts: well-formed SVG, escaped text, one mark per
figure, and cues besides colour."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from service.charts import Series, _ticks, bar_chart, heat_table, line_chart, percent, plain

SVG = "{http://www.w3.org/2000/svg}"


def _parse(fragment: str) -> ET.Element:
    return ET.fromstring(fragment)  # raises on anything that is not well-formed


def test_a_line_chart_marks_every_figure_and_breaks_at_a_gap() -> None:
    labels = ["2024-01", "2024-02", "2024-03", "2024-04"]
    html = line_chart(
        labels,
        [Series("treated <A>", [1, 2, None, 4]), Series("holdout", [0.5, 0.5, 0.5, 0.5])],
        title="Conversion & uplift",
    )
    root = _parse(html)
    tips = [t.text for t in root.iter(f"{SVG}title")]
    assert "treated <A>, 2024-04: 4" in tips  # the value of every point, escaped in the markup
    assert "holdout, 2024-01: 0.50" in tips
    assert "&lt;A&gt;" in html
    assert "<A>" not in html.replace("&lt;A&gt;", "")
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == 2  # treated: [1, 2] then the gap, then [4] alone (no line for one point)
    assert {line.get("stroke-dasharray") for line in lines} == {None, "6 3"}  # not colour alone
    assert root.find("figcaption").text == "Conversion & uplift"  # type: ignore[union-attr]


def test_a_chart_without_figures_says_so() -> None:
    assert "No figures yet" in line_chart(["a"], [Series("s", [None])], title="t")
    assert "No figures yet" in bar_chart([], title="t")


def test_series_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="one value per label"):
        line_chart(["a", "b"], [Series("s", [1])], title="t")


def test_ticks_cover_the_figures_with_round_steps() -> None:
    assert _ticks(0, 1234) == [0, 500, 1000, 1500]
    assert _ticks(0, 0.37) == [0, 0.1, 0.2, 0.3, 0.4]
    ticks = _ticks(-5, 17)
    assert ticks[0] <= -5
    assert ticks[-1] >= 17


def test_the_heat_table_prints_each_share_in_its_cell() -> None:
    html = heat_table(
        [("2024-01", [1.0, 0.25, None]), ("2024-02", [1.0, None, None])],
        ["0", "1", "2"],
        title="Cohorts",
        row_header="First order",
    )
    root = _parse(html)
    cells = [td.text for td in root.iter("td")]
    assert cells == ["100.0%", "25.0%", None, "100.0%", None, None]
    assert all(td.get("title") is None for td in root.iter("td"))


def test_the_heat_table_gives_each_cell_its_tip() -> None:
    html = heat_table(
        [("2024-01", [1.0, 0.25]), ("2024-02", [1.0])],
        ["0", "1"],
        title="Cohorts",
        tips=[["4 of 4", "1 of 4 <&>"], ["2 of 2"]],
    )
    root = _parse(html)
    assert [td.get("title") for td in root.iter("td")] == ["4 of 4", "1 of 4 <&>", "2 of 2"]


def test_bars_print_their_values() -> None:
    root = _parse(bar_chart([("at_risk", 1200), ("lapsed", 30.5)], title="Segments"))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "1,200" in texts
    assert "30.50" in texts


def test_formats() -> None:
    assert plain(1234567) == "1,234,567"
    assert plain(0.125) == "0.12"
    assert percent(0.1234) == "12.3%"
