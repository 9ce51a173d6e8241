"""The server-side SVG line chart: valid SVG, points where their values say, round ticks."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from hypothesis import assume, given
from hypothesis import strategies as st

from service.admin.charts import line_chart, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


def _circles(svg: str) -> list[tuple[float, float, str, str]]:
    root = ET.fromstring(svg)
    return [(float(c.get("cx")), float(c.get("cy")), c.get("data-x"), c.get("data-y")) for c in root.iter(NS + "circle")]


def test_points_are_placed_by_value_with_axes_and_labels():
    svg = line_chart([(3, 0.5), (1, 0.9), (2, 0.7), (4, float("nan"))], title="acc <of> model", y_label="accuracy")
    root = ET.fromstring(svg)  # well-formed, title escaped
    assert root.get("aria-label") == "acc <of> model" and root.find(NS + "title").text == "acc <of> model"
    pts = _circles(svg)
    assert [p[2] for p in pts] == ["1", "2", "3"]  # sorted by version; the NaN point dropped
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    assert xs[0] < xs[1] < xs[2] and math.isclose(xs[1] - xs[0], xs[2] - xs[1])
    assert ys[0] < ys[1] < ys[2]  # higher value, higher on screen (smaller y)
    assert math.isclose(ys[1] - ys[0], ys[2] - ys[1], rel_tol=1e-2)
    texts = [t.text for t in root.iter(NS + "text")]
    assert "accuracy" in texts and "version" in texts and {"v1", "v2", "v3"} <= set(texts)
    assert len(list(root.iter(NS + "line"))) >= 2 + 3  # two axes and the grid lines


def test_empty_and_single_point_charts():
    empty = line_chart([], title="bound", y_label="kl_nats")
    assert "no data yet" in empty and "<circle" not in empty
    ET.fromstring(empty)
    one = _circles(line_chart([(5, 0.0)], title="bound", y_label="kl_nats"))
    assert len(one) == 1 and all(math.isfinite(v) for v in one[0][:2])


def test_many_versions_keep_the_x_axis_readable():
    svg = line_chart([(i, i * 1e-7) for i in range(1, 101)], title="kl", y_label="kl_nats")
    labels = [t.text for t in ET.fromstring(svg).iter(NS + "text") if re.fullmatch(r"v\d+", t.text or "")]
    assert len(_circles(svg)) == 100 and len(labels) <= 14 and labels[-1] == "v100"


@given(st.floats(-1e12, 1e12, allow_nan=False), st.floats(1e-15, 1e12, allow_nan=False))
def test_nice_ticks_are_round_and_cover_the_range(lo, width):
    assume(width > abs(lo) * 1e-6)  # a range resolvable in float64 at that magnitude
    hi = lo + width
    ticks = nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 12
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5, 10))
    assert ticks[0] <= lo + step * 1e-6 and ticks[-1] >= hi - step * (1 + 1e-6)
    assert ticks[-1] <= hi + step * 1e-5
