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


def test_summary_reports_the_mean_and_the_worst():
    figures = [{"ratio": 1.0, "percentile": 0.5}, {"ratio": 3.0, "percentile": 1.0}]
    result = summary(figures)
    assert result["mean_ratio"] == 2.0 and result["worst_ratio"] == 3.0 and result["share_above_2x"] == 0.5
    assert result["mean_percentile"] == 0.75
