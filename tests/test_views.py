import pytest
import torch

from panosync.views import View, add_view, coverage, crop, grid_positions, loop_positions, views_for_canvas


def test_horizontal_grid_matches_the_reference_layout():
    # 512 x 3072 at stride 16, the paper's canvas: 1 row of (384 - 64) / 16 + 1 = 21 views.
    views = views_for_canvas(64, 384, window=64, stride=16)
    assert len(views) == 21
    assert [v.left for v in views] == list(range(0, 321, 16))
    assert all(v.top == 0 and v.height == v.width == 64 for v in views)


def test_vertical_and_2d_grids_are_row_major():
    vertical = views_for_canvas(384, 64, window=64, stride=16)
    assert [v.top for v in vertical] == list(range(0, 321, 16)) and all(v.left == 0 for v in vertical)
    grid = views_for_canvas(256, 256, window=64, stride=64)
    assert [(v.top, v.left) for v in grid[:5]] == [(0, 0), (0, 64), (0, 128), (0, 192), (64, 0)]
    assert len(grid) == 16


@pytest.mark.parametrize("window", [64, 96, 128])
def test_window_size_is_a_parameter(window):
    views = views_for_canvas(window, 3 * window, window=window, stride=window // 4)
    assert all(v.width == v.height == window for v in views)
    assert views[-1].right == 3 * window


@pytest.mark.parametrize("length,stride", [(100, 16), (71, 8), (64, 1), (65, 64), (200, 7)])
def test_last_view_is_flush_with_the_edge(length, stride):
    positions = grid_positions(length, 64, stride)
    assert positions[0] == 0 and positions[-1] == length - 64
    assert all(0 < b - a <= stride for a, b in zip(positions, positions[1:]))


@pytest.mark.parametrize("height,width,stride", [(64, 64, 16), (70, 150, 16), (100, 64, 64), (96, 133, 5), (64, 65, 1)])
def test_every_latent_pixel_is_covered(height, width, stride):
    counts = coverage(height, width, views_for_canvas(height, width, 64, stride))
    assert counts.min() >= 1


def test_coverage_counts_in_the_interior():
    counts = coverage(64, 384, views_for_canvas(64, 384, 64, 16))
    assert counts[0, 0] == 1 and counts[0, 16] == 2 and counts[0, 100] == 4 and counts[0, -1] == 1


@pytest.mark.parametrize("rows", [64, 160])
@pytest.mark.parametrize("stride", [16, 8, 64, 1])
def test_loop_closure_covers_every_column_equally(rows, stride):
    width = 256
    views = views_for_canvas(rows, width, 64, stride, loop_closure=True)
    counts = coverage(rows, width, views)
    # every column as often as any other, the seam included: window / stride views
    assert torch.all(counts[0] == 64 // stride)
    assert any(v.wraps(width) for v in views) == (stride < 64)  # tiles meet exactly at the seam
    # several rows: every row band gets the full set of wrap views
    assert len(views) == len(grid_positions(rows, 64, stride)) * (width // stride)


def test_loop_closure_with_a_stride_that_does_not_divide_the_width():
    views = views_for_canvas(64, 200, 64, 16, loop_closure=True)
    starts = [v.left for v in views]
    gaps = [(b - a) % 200 for a, b in zip(starts, starts[1:] + starts[:1])]
    assert set(gaps) <= {15, 16}  # evenly spaced all the way round, no bunching at the seam
    counts = coverage(64, 200, views)[0]
    assert counts.max() - counts.min() <= 1


def test_loop_positions_divisible():
    assert loop_positions(128, 16) == list(range(0, 128, 16))


def test_crop_and_add_wrap_around_the_seam():
    canvas = torch.arange(10.0).repeat(3, 1)  # 3 x 10, value = column
    view = View(top=1, left=7, height=2, width=5)
    assert view.wraps(10) and view.column_indices(10) == [7, 8, 9, 0, 1]
    assert crop(canvas, view).tolist() == [[7, 8, 9, 0, 1]] * 2
    buffer = torch.zeros(3, 10)
    add_view(buffer, view, torch.ones(2, 5))
    assert buffer.tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 1, 1, 1] and buffer[0].sum() == 0
    assert view.pixel_box(8) == (8, 24, 56, 96)


def test_crop_and_add_without_wrap():
    canvas = torch.arange(20.0).reshape(2, 10)
    view = View(0, 2, 2, 3)
    assert crop(canvas, view).tolist() == [[2, 3, 4], [12, 13, 14]]
    buffer = torch.zeros(2, 10)
    add_view(buffer, view, crop(canvas, view))
    assert buffer[:, 2:5].tolist() == [[2, 3, 4], [12, 13, 14]] and buffer.sum() == 48


@pytest.mark.parametrize(
    "height,width,stride,message",
    [(63, 128, 16, "at least one window"), (64, 40, 8, "at least one window"), (64, 128, 0, "stride"), (64, 128, 65, "stride")],
)
def test_bad_canvases_are_refused_with_a_reason(height, width, stride, message):
    with pytest.raises(ValueError, match=message):
        views_for_canvas(height, width, 64, stride)
