"""The wrap measurement (pocket.wrap): jumps round the circle, the view boundaries, the figures."""

import numpy as np

from pocket.wrap import boundary_columns, column_jumps, summary, wrap_figures


def test_boundaries_are_the_view_edges_round_the_circle():
    # pocket at stride 12: views every 12 latent columns (48 px), 16 wide (64 px), on 96 columns
    assert boundary_columns(384, 64, 16, 12, 4) == sorted({48 * k for k in range(8)} | {48 * k + 16 for k in range(8)})
    assert 0 in boundary_columns(200, 40, 10, 3, 2)  # the wrap is always a view's edge


def ramp_image(width, seam_step):
    """Stripes that change by the same amount at every column round the circle, plus a ramp that adds
    `seam_step` across it, so that it jumps back by that much at the wrap only."""
    columns = np.arange(width)
    row = 100 + 2 * (-1.0) ** columns + seam_step * columns / width
    return np.repeat(np.repeat(row[None, :, None], 8, axis=0), 3, axis=2)


def test_a_seam_at_the_wrap_stands_out_and_a_seamless_circle_does_not():
    boundaries = boundary_columns(384, 64, 16, 12, 4)
    seamless = wrap_figures(ramp_image(384, 0), boundaries)
    seam = wrap_figures(ramp_image(384, 60), boundaries)
    assert seamless["ratio"] == 1.0 and seamless["percentile"] == 0.5, seamless
    assert seam["ratio"] > 10 and seam["percentile"] == 1.0, seam
    assert seamless["others_above_2x"] == seam["others_above_2x"] == 0.0
    turned = wrap_figures(np.roll(ramp_image(384, 60), 96, axis=1), boundaries)  # the seam at column 96, a boundary
    assert turned["ratio"] < 1 and abs(turned["others_above_2x"] - 1 / (len(boundaries) - 1)) < 1e-3, turned
    assert column_jumps(ramp_image(384, 60))[0] == max(column_jumps(ramp_image(384, 60)))


def image_with_jumps(width, jumps: dict[int, float]):
    """A grey image whose column-to-column jump round the circle is jumps[c] at column c, 0 elsewhere,
    except column 1 (no view edge), which takes whatever closes the circle."""
    steps = np.zeros(width)
    for column, jump in jumps.items():
        steps[column] = jump * (-1) ** column  # alternate up and down to stay near grey
    steps[1] = -steps.sum()
    row = 128 + np.cumsum(np.roll(steps, -1))  # row[c] - row[c - 1] = steps[c] for c >= 1
    row = np.roll(row, 1)
    return np.repeat(np.repeat(row[None, :, None], 8, axis=0), 3, axis=2)


def test_another_boundary_counts_as_over_2x_against_the_mean_of_the_rest_wrap_included():
    boundaries = boundary_columns(384, 64, 16, 12, 4)
    others = [c for c in boundaries if c != 0]
    image = image_with_jumps(384, {0: 100, **{c: 4 for c in others[1:]}, others[0]: 12})
    assert np.allclose(column_jumps(image)[boundaries], [100, 12] + [4] * (len(others) - 1))
    # the rest's mean is (100 + 14 * 4) / 15 = 10.4 with the wrap, 4 without it: 12 is over 2x only without
    assert wrap_figures(image, boundaries)["others_above_2x"] == 0.0
    alone = image_with_jumps(384, {0: 4, **{c: 4 for c in others[1:]}, others[0]: 8.3})
    # over 2x the rest's 4, not over 2x a mean that counted the boundary itself (about 4.27)
    assert abs(wrap_figures(alone, boundaries)["others_above_2x"] - 1 / len(others)) < 1e-3


def test_summary_reports_the_mean_and_the_worst():
    figures = [{"ratio": 1.0, "percentile": 0.5}, {"ratio": 3.0, "percentile": 1.0}]
    result = summary(figures)
    assert result["mean_ratio"] == 2.0 and result["worst_ratio"] == 3.0 and result["share_above_2x"] == 0.5
    assert result["mean_percentile"] == 0.75
