"""``lightning_xai.panels``: image panels drawn with numpy, titles with PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_xai.panels import heat_overlay, panel_figure
from lightning_xai.records import figure_to_array


def _solid(rgb: tuple[float, float, float], size: int = 16) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, size, size).clone()


def test_panels_land_side_by_side_enlarged_and_sharp() -> None:
    red, blue = _solid((1, 0, 0)), _solid((0, 0, 1))
    out = figure_to_array(panel_figure([red, blue], panel_px=64))  # 16 px panels enlarged 4x, no titles
    h, w, _ = out.shape
    is_red = (out[..., 0] > 240) & (out[..., 1] < 15) & (out[..., 2] < 15)
    is_blue = (out[..., 2] > 240) & (out[..., 0] < 15) & (out[..., 1] < 15)
    assert is_red.sum() == 64 * 64 and is_blue.sum() == 64 * 64  # every pixel of both panels, nothing blended
    red_cols, blue_cols = np.nonzero(is_red.any(0))[0], np.nonzero(is_blue.any(0))[0]
    assert red_cols.max() < blue_cols.min()  # left to right, in order
    assert blue_cols.min() - red_cols.max() > 1  # with white between them
    assert h < 64 + 20 and w < 2 * 64 + 20  # no room for titles that are not there


def test_titles_are_drawn_above_their_panels_and_rows_wrap() -> None:
    panels = [_solid((0, 1, 0)) for _ in range(3)]
    plain = figure_to_array(panel_figure(panels, cols=2, panel_px=32))
    titled = figure_to_array(
        panel_figure(panels, ["one", "two\nlines", ""], "all of them", cols=2, panel_px=32)
    )
    # two rows of panels; titles add a band per row and one for the figure's title
    green = (plain[..., 1] > 240) & (plain[..., 0] < 15)
    rows = np.nonzero(green.any(1))[0]
    assert np.any(np.diff(rows) > 1) and green.sum() == 3 * 32 * 32
    assert titled.shape[0] > plain.shape[0] + 2 * 10
    g = (titled[..., 1] > 240) & (titled[..., 0] < 15)
    first_green_row = int(np.nonzero(g.any(1))[0][0])
    band = titled[:first_green_row]
    assert (band.min(-1) < 100).any()  # dark text above the first panel row


@pytest.mark.parametrize(
    ("panels", "titles", "match"),
    [
        ([], None, "at least one panel"),
        ([torch.zeros(3, 8, 8), torch.zeros(3, 8, 9)], None, "share one size"),
        ([torch.zeros(3, 8, 8)], ["a", "b"], "2 titles for 1 panels"),
        ([torch.zeros(8, 8)], None, r"must be an image \[C, H, W\]"),
    ],
)
def test_bad_panels_are_named(panels: list, titles: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        panel_figure(panels, titles)


def test_heat_overlay_blends_the_colour_map_like_imshow_with_alpha() -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    image = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    heat = torch.linspace(0, 1, 36).reshape(6, 6)
    assert torch.equal(heat_overlay(image, heat, alpha=0.0), image)
    ours = heat_overlay(image, heat, alpha=0.45)
    # matplotlib itself: the image, the heat map over it with alpha, drawn 1:1 and read back
    fig = Figure(figsize=(0.6, 0.6), dpi=10)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.imshow(heat.numpy(), cmap=colormaps["jet"], alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
    drawn = torch.from_numpy(figure_to_array(fig)).float().permute(2, 0, 1) / 255
    assert drawn.shape == ours.shape
    assert (drawn - ours).abs().max() < 3 / 255
    with pytest.raises(ValueError, match="alpha must lie in"):
        heat_overlay(image, heat, alpha=1.5)
    with pytest.raises(ValueError, match="heat map is"):
        heat_overlay(image, heat[:3])


@pytest.mark.parametrize("cmap", ["jet", "bwr", "viridis"])
def test_heat_overlay_picks_exactly_the_colours_of_matplotlibs_colormap(cmap: str) -> None:
    from matplotlib import colormaps

    g = torch.Generator().manual_seed(1)
    heat = torch.rand(32, 32, generator=g)
    # the edges of the table's bins, the ends, and values outside [0, 1] (clipped)
    heat[0, :8] = torch.tensor([0.0, 1.0, 0.5, 1 - 1e-7, 255 / 256, 1 / 256, -0.5, 1.5])
    image = torch.rand(3, 32, 32, generator=g)
    colour = torch.from_numpy(colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3].astype(np.float32)).permute(
        2, 0, 1
    )
    expected = (0.55 * image + 0.45 * colour).clamp(0, 1)
    for _ in range(2):  # the second call reads the cached table
        assert torch.equal(heat_overlay(image, heat, alpha=0.45, cmap=cmap), expected)


def test_display_image_scales_normalised_inputs_and_never_aliases_the_input() -> None:
    from lightning_xai.panels import display_image

    ready = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    shown = display_image(ready)
    assert torch.equal(shown, ready)
    shown[0, 0, 0] = 5.0  # a new tensor: callers draw on it
    assert float(ready[0, 0, 0]) <= 1.0
    normalised = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])  # grey, outside [0, 1]
    out = display_image(normalised)
    assert out.shape == (3, 2, 2) and torch.equal(out[0], out[2])
    assert out[0].tolist() == [[0.0, 0.5], [0.75, 1.0]]
    assert display_image(torch.zeros(2, 2)).shape == (3, 2, 2)
    assert display_image(torch.rand(4, 2, 2)).shape == (3, 2, 2)  # alpha or extra channels dropped
    with pytest.raises(ValueError, match=r"must be \[C, H, W\] or \[H, W\]"):
        display_image(torch.zeros(1, 3, 2, 2))
