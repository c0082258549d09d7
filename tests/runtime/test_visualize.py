"""runtime/visualize.py: masked patches, layout sizes, caption highlight, the model's view, PNG saving."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import InputError
from runtime.preprocess import ImagePreprocessConfig
from runtime.visualize import (
    COLS,
    HIGHLIGHT,
    LABEL_H,
    LINE_H,
    PAD,
    TITLE_H,
    model_view,
    panel_origin,
    render_stages,
    save_stages_png,
)

REPO = Path(__file__).resolve().parents[2]
COLOUR = (200, 100, 60)
MASKED = (64, 49, 43)  # round(0.15 * COLOUR + 0.85 * 40)
P = 14  # patch size: 336 / 24
TOKENS = [("▁What", False), ("▁colour", True), ("▁is", False), ("▁it", False), ("?", False)]


def _view():
    return Image.new("RGB", (336, 336), COLOUR)


def _stages(n):
    return [{"name": f"s{i}", "kept": [0, 25, 575]} for i in range(n)]


def _patch(canvas, panel, idx, title=False):
    x, y = panel_origin(panel, 336, 336, title)
    r, c = divmod(idx, 24)
    return np.asarray(canvas)[y + r * P:y + (r + 1) * P, x + c * P:x + (c + 1) * P]


def _caption_top(n_panels, title=False):
    return (TITLE_H if title else 0) + PAD + -(-n_panels // COLS) * (336 + LABEL_H + PAD)


@pytest.mark.parametrize("title", [False, True])
def test_kept_patches_keep_colour_pruned_are_masked(title):
    canvas = render_stages(_view(), _stages(1), 24, TOKENS, title="t" if title else "")
    assert (_patch(canvas, 0, 1, title) == COLOUR).all()  # "input" panel: nothing masked
    for idx in (0, 25, 575):
        assert (_patch(canvas, 1, idx, title) == COLOUR).all()
    for idx in (1, 24, 26, 300, 574):
        assert (_patch(canvas, 1, idx, title) == MASKED).all()
    x, y = panel_origin(1, 336, 336, title)
    panel = np.asarray(canvas)[y:y + 336, x:x + 336].reshape(-1, 3)
    assert (panel == COLOUR).all(1).sum() == 3 * P * P and (panel == MASKED).all(1).sum() == 573 * P * P


@pytest.mark.parametrize("n_stages, width, rows", [(1, PAD + 2 * 344, 1), (3, PAD + 4 * 344, 1),
                                                   (4, PAD + 4 * 344, 2), (8, PAD + 4 * 344, 3)])
def test_panel_count_sets_size(n_stages, width, rows):
    canvas = render_stages(_view(), _stages(n_stages), 24, TOKENS)
    assert canvas.size == (width, PAD + rows * (336 + LABEL_H + PAD) + LINE_H + PAD)
    assert render_stages(_view(), _stages(n_stages), 24, TOKENS, title="x").height == canvas.height + TITLE_H
    assert render_stages(_view(), _stages(n_stages), 24, []).height == canvas.height - LINE_H


def test_labels_drawn_under_panels():
    canvas = np.asarray(render_stages(_view(), _stages(2), 24, TOKENS))
    for i in range(3):
        x, y = panel_origin(i, 336, 336, False)
        strip = canvas[y + 336:y + 336 + LABEL_H, x:x + 336]
        assert (strip < 128).all(-1).any()  # dark text pixels


def _highlight_pixels(canvas, n_panels):
    cap = np.asarray(canvas)[_caption_top(n_panels):]
    return int((cap == HIGHLIGHT).all(-1).sum())


def test_caption_highlight_present_only_when_asked():
    assert _highlight_pixels(render_stages(_view(), _stages(1), 24, TOKENS), 2) > 100
    plain = [(t, False) for t, _ in TOKENS]
    assert _highlight_pixels(render_stages(_view(), _stages(1), 24, plain), 2) == 0
    assert _highlight_pixels(render_stages(_view(), _stages(1), 24, []), 2) == 0


def test_caption_wraps_to_width():
    long = [("▁word", i % 7 == 0) for i in range(200)]
    canvas = render_stages(_view(), _stages(1), 24, long)
    lines = (canvas.height - _caption_top(2) - PAD) // LINE_H
    assert lines > 3
    cap = np.asarray(canvas)[_caption_top(2):]
    assert (cap[:, -PAD + 2:] == 255).all()  # nothing drawn into the right margin


def test_bad_indices_or_grid_refused():
    with pytest.raises(InputError, match="outside 0..575"):
        render_stages(_view(), [{"name": "x", "kept": [576]}], 24, TOKENS)
    with pytest.raises(InputError, match="patch grid"):
        render_stages(_view(), _stages(1), 25, TOKENS)


def test_model_view_is_bicubic_resize_then_centre_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (448, 672, 3), dtype=np.uint8))
    view = model_view(image, ImagePreprocessConfig())
    assert view.size == (336, 336) and view.mode == "RGB"
    expected = image.resize((504, 336), resample=Image.Resampling.BICUBIC).crop((84, 0, 420, 336))
    np.testing.assert_array_equal(np.asarray(view), np.asarray(expected))


def test_save_png(tmp_path):
    out = tmp_path / "stages.png"
    save_stages_png(out, _view(), _stages(2), 24, TOKENS, title="demo")
    with Image.open(out) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im),
                                      np.asarray(render_stages(_view(), _stages(2), 24, TOKENS, title="demo")))
    assert [p.name for p in tmp_path.iterdir()] == ["stages.png"]  # no temp file left behind


def test_save_png_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        save_stages_png(tmp_path / "missing" / "x.png", _view(), _stages(1), 24, TOKENS)
    with pytest.raises(InputError, match=r"\.png"):
        save_stages_png(tmp_path / "x.jpg", _view(), _stages(1), 24, TOKENS)
    assert list(tmp_path.iterdir()) == []


def test_no_heavy_imports():
    code = ("import sys; import runtime.visualize; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'matplotlib')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
