"""``lightning_xai.charts``: bar charts drawn into pixels, read back from the pixels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lightning_xai.charts import TAB10, bar_chart, line_chart, side_by_side
from lightning_xai.panels import image_figure
from lightning_xai.records import figure_to_array

RED, BLUE = "#d62728", "#1f77b4"


def _mask(img: np.ndarray, colour: str) -> np.ndarray:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(img.astype(int) - rgb).sum(-1) <= 3


def _columns(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(first column, last column, height in rows) of each run of columns that hold the colour."""
    cols = np.nonzero(mask.any(0))[0]
    runs, start = [], cols[0]
    for a, b in itertools.pairwise(cols):
        if b != a + 1:
            runs.append((start, a))
            start = b
    runs.append((start, cols[-1]))
    return [(a, b, int(mask[:, a : b + 1].any(1).sum())) for a, b in runs]


def test_bar_heights_follow_the_values_on_the_axis() -> None:
    img = bar_chart(["a", "b", "c"], [[1.0, 2.0, 0.5]], colours=[RED], ylim=(0.0, 2.0), size=(300, 240))
    bars = _columns(_mask(img, RED))
    assert len(bars) == 3 and bars[0][1] < bars[1][0] < bars[1][1] < bars[2][0]  # one bar per group, in order
    h = [b[2] for b in bars]
    assert abs(h[1] / h[0] - 2.0) < 0.05 and abs(h[2] / h[0] - 0.5) < 0.05
    # the bars stand on the same baseline
    bottoms = {int(np.nonzero(_mask(img, RED)[:, b[0]])[0].max()) for b in bars}
    assert len(bottoms) == 1


def test_series_are_grouped_in_order_with_a_legend_and_nan_draws_nothing() -> None:
    values = [[1.0, float("nan")], [0.5, 1.0]]
    img = bar_chart(["g1", "g2"], values, series=["first", "second"], size=(400, 260))
    first, second = _columns(_mask(img, TAB10[0])), _columns(_mask(img, TAB10[1]))
    # series 0: one bar (g2 is NaN) plus its legend patch; series 1: two bars plus its legend patch
    assert len(first) == 2 and len(second) == 3
    assert first[0][1] < second[0][0]  # within a group, series left to right
    legend_x = first[-1][0]
    assert legend_x == second[-1][0] and legend_x > second[1][1]  # the legend sits right of every bar
    single = bar_chart(["g1", "g2"], [[1.0, 2.0]], series=["only"], size=(400, 260))
    assert len(_columns(_mask(single, TAB10[0]))) == 2  # no legend for one series


def test_error_bars_marks_and_reference_line() -> None:
    img = bar_chart(
        ["a", "b"],
        [[1.0, 1.0]],
        errors=[[0.5, 0.0]],
        marks=[[False, True]],
        hline=0.25,
        colours=[BLUE],
        ylim=(0.0, 2.0),
        size=(300, 300),
    )
    bars = _columns(_mask(img, BLUE))
    dark = img.max(-1) < 80
    tops = [int(np.nonzero(_mask(img, BLUE)[:, b[0]])[0].min()) for b in bars]
    centres = [(b[0] + b[1]) // 2 for b in bars]
    px_per_unit = bars[0][2] / 1.0
    # a's error bar rises half a unit over its bar at the bar's centre; b has none, but a mark
    rise = 0
    while dark[tops[0] - 1 - rise, centres[0]]:  # the error bar's line, from the bar's top up to its cap
        rise += 1
    assert abs(rise - 0.5 * px_per_unit) <= 2
    star_rows = np.nonzero(dark[: tops[1], centres[1] - 3 : centres[1] + 4].any(1))[0]
    assert star_rows.size and tops[1] - star_rows.max() < 12  # the '*' sits just over b's bar
    grey = np.abs(img.astype(int) - 128).sum(-1) <= 3
    line_row = int(np.argmax(grey.sum(1)))
    base = int(np.nonzero(_mask(img, BLUE)[:, bars[0][0]])[0].max())
    assert abs((base - line_row) - 0.25 * px_per_unit) <= 2  # the dashed line at 0.25


def test_negative_values_hang_below_zero_and_long_labels_are_not_cut() -> None:
    names = ["a rather long concept name", "another long concept name", "x"]
    img = bar_chart(names, [[0.5, -0.5, 0.25]], colours=[RED], ylabel="attribution", size=(200, 200))
    m = _mask(img, RED)
    bars = _columns(m)
    spans = [np.nonzero(m[:, b[0]])[0] for b in bars]
    assert spans[1].min() >= spans[0].max() - 1  # the negative bar starts where the positive one ends
    assert abs(len(spans[0]) - len(spans[1])) <= 1
    # turned labels fit: the page keeps a white border on every side
    white = img.min(-1) == 255
    assert white[:3].all() and white[-3:].all() and white[:, :3].all() and white[:, -3:].all()


def test_bar_colours_colour_single_bars() -> None:
    img = bar_chart(
        ["up", "down", "up too"], [[1.0, -1.0, 0.5]], bar_colours=[[BLUE, RED, BLUE]], size=(300, 240)
    )
    assert len(_columns(_mask(img, BLUE))) == 2 and len(_columns(_mask(img, RED))) == 1
    blue, red = _columns(_mask(img, BLUE)), _columns(_mask(img, RED))
    assert blue[0][1] < red[0][0] < red[0][1] < blue[1][0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": ["a", "b"], "values": [1.0, 2.0, 3.0]}, r"values must be \[series, 2 groups\]"),
        ({"groups": ["a"], "values": [[1.0], [2.0]], "series": ["x"]}, "1 series names for 2 rows"),
        ({"groups": ["a", "b"], "values": [[1.0, 2.0]], "errors": [[1.0]]}, r"must be \[2\] or \[2, 2\]"),
        ({"groups": ["a"], "values": [[1.0]], "errors": [[1.0], [1.0]]}, "2 rows of errors for 1 series"),
        ({"groups": ["a"], "values": [[1.0]], "ylim": (1.0, 0.0)}, "ylim must rise"),
        ({"groups": ["a"], "values": [[1.0]], "colours": ["red"]}, "#rrggbb"),
        (
            {"groups": ["a", "b"], "values": [[1.0, 2.0]], "bar_colours": [[RED]]},
            r"bar_colours must be \[1 series, 2 groups\]",
        ),
    ],
)
def test_bad_input_is_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bar_chart(**kwargs)


def test_lines_follow_their_points_to_scale_and_break_at_nan() -> None:
    img = line_chart(
        [0.0, 1.0, 10.0],
        [[0.0, 1.0, 0.0], [1.0, float("nan"), 1.0]],
        series=["peak", "flat"],
        colours=[RED, BLUE],
        ylim=(0.0, 1.0),
        size=(420, 260),
    )
    red, blue = _mask(img, RED), _mask(img, BLUE)
    cols = np.nonzero(red.any(0))[0]
    legend_x = _columns(red)[-1][0]
    plot_cols = cols[cols < legend_x - 5]
    top_col = plot_cols[np.argmin([np.nonzero(red[:, c])[0].min() for c in plot_cols])]
    span = plot_cols.max() - plot_cols.min()
    assert abs((top_col - plot_cols.min()) / span - 0.1) < 0.03  # the peak sits at x = 1 of 0..10
    # the second line has no middle point: two markers at its ends, no line between them
    blue_cols = np.nonzero(blue[:, : legend_x - 5].any(0))[0]
    assert (np.diff(blue_cols) > 1).sum() == 1
    labels = line_chart(["a", "b"], [1.0, 2.0])  # labels: evenly spaced, a single line needs no legend
    assert labels.shape[2] == 3
    with pytest.raises(ValueError, match=r"values must be \[series, 3 points\]"):
        line_chart([0, 1, 2], [[1.0, 2.0]])


def test_side_by_side_and_image_figure_keep_every_pixel() -> None:
    a = np.zeros((10, 7, 3), np.uint8)
    b = np.full((14, 5, 3), 9, np.uint8)
    page = side_by_side([a, b], gap=3)
    assert page.shape == (14, 15, 3)
    assert (page[:10, :7] == 0).all() and (page[:, 10:] == 9).all() and (page[10:, :7] == 255).all()
    titled = side_by_side([a, b], "title", gap=3)
    assert titled.shape[0] > 14 and (titled[-14:, 10:] == 9).all() and (titled[:-14].min(-1) < 100).any()
    assert np.array_equal(figure_to_array(image_figure(page)), page)
    with pytest.raises(ValueError, match="at least one chart"):
        side_by_side([])
