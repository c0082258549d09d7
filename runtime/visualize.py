"""Picture of what each pruning stage kept (like IVTP's Fig. 5): one panel per stage plus the prompt caption.

Pillow + numpy only. The panels show the model's own 336x336 view, a grid x grid raster of patches.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from runtime.errors import InputError
from runtime.preprocess import ImagePreprocessConfig, preprocess

COLS = 4  # panels per row
PAD = 8  # gap around and between panels (px)
LABEL_H = 24  # strip under each panel for "name: N kept"
TITLE_H = 30  # strip above the panels, only when a title is given
LINE_H = 26  # caption line height
MASK_RGB, MASK_ALPHA = (40, 40, 40), 0.85  # pruned patch = 15% image + 85% dark grey
HIGHLIGHT = (255, 214, 64)  # background box of highlighted caption tokens
BG, FG = (255, 255, 255), (0, 0, 0)


def model_view(image: Image.Image, cfg: ImagePreprocessConfig) -> Image.Image:
    """The RGB crop the model sees (pad/resize/crop exactly as preprocess()), before rescale and normalise."""
    x = preprocess(image, dataclasses.replace(cfg, do_rescale=False, do_normalize=False))  # uint8 values, float32
    return Image.fromarray(x.transpose(1, 2, 0).astype(np.uint8), "RGB")


def mask_pruned(view: np.ndarray, kept, grid: int) -> np.ndarray:
    """HWC uint8 view with every patch not in `kept` blended towards MASK_RGB."""
    h, w = view.shape[:2]
    keep = np.zeros(grid * grid, bool)
    keep[np.asarray(kept, dtype=np.int64)] = True
    pruned = np.repeat(np.repeat(~keep.reshape(grid, grid), h // grid, 0), w // grid, 1)
    out = view.copy()
    blend = view[pruned] * (1 - MASK_ALPHA) + np.array(MASK_RGB) * MASK_ALPHA
    out[pruned] = np.round(blend).astype(np.uint8)
    return out


def _words(tokens):
    """Group (text, highlighted) pieces into words: a piece starting with a space (or "▁") starts a new word."""
    words = []
    for text, hl in tokens:
        text = text.replace("▁", " ")
        if text in ("\n", "<0x0A>"):
            words.append(None)  # explicit line break
        elif not words or words[-1] is None or text.startswith(" "):
            words.append([(text, bool(hl))])
        else:
            words[-1].append((text, bool(hl)))
    return words


def _layout_caption(tokens, font, width):
    """[(x, line, text, highlighted)] wrapped at word boundaries to `width`, and the number of lines."""
    placed, x, line = [], PAD, 0
    for word in _words(tokens):
        if word is None:
            x, line = PAD, line + 1
            continue
        if x > PAD and x + sum(font.getlength(t) for t, _ in word) > width - PAD:
            x, line = PAD, line + 1
        if x == PAD:  # no leading space at a line start
            word = [(word[0][0].lstrip(), word[0][1])] + word[1:]
        for text, hl in word:
            placed.append((x, line, text, hl))
            x += font.getlength(text)
    return placed, (line + 1 if placed else 0)


def render_stages(view: Image.Image, stages: list[dict], grid: int, caption_tokens: list[tuple[str, bool]],
                  title: str = "") -> Image.Image:
    """Panels ("input", then each stage with pruned patches masked) in rows of COLS, then the highlighted caption."""
    arr = np.asarray(view.convert("RGB"))
    ph, pw = arr.shape[:2]
    if grid < 1 or ph % grid or pw % grid:
        raise InputError(f"view is {pw}x{ph}, not divisible into a {grid}x{grid} patch grid; pass model_view()'s "
                         "crop and the vision tower's grid (24 for LLaVA-1.5's 336 px / 14 px patches)")
    panels = [("input", list(range(grid * grid)))] + [(s["name"], s["kept"]) for s in stages]
    for name, kept in panels:
        if any(not 0 <= int(i) < grid * grid for i in kept):
            raise InputError(f"stage {name!r} keeps patch indices outside 0..{grid * grid - 1}; "
                             f"expected raster indices into the {grid}x{grid} grid")
    cols, rows = min(COLS, len(panels)), -(-len(panels) // COLS)
    width = PAD + cols * (pw + PAD)
    label_font, cap_font = ImageFont.load_default(size=16), ImageFont.load_default(size=18)
    placed, n_lines = _layout_caption(caption_tokens, cap_font, width)
    top = TITLE_H if title else 0
    cap_top = top + PAD + rows * (ph + LABEL_H + PAD)
    canvas = Image.new("RGB", (width, cap_top + n_lines * LINE_H + PAD), BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, TITLE_H // 2), title, fill=FG, font=ImageFont.load_default(size=20), anchor="lm")
    for i, (name, kept) in enumerate(panels):
        x, y = panel_origin(i, ph, pw, bool(title))
        canvas.paste(Image.fromarray(mask_pruned(arr, kept, grid) if i else arr), (x, y))
        draw.text((x + pw // 2, y + ph + LABEL_H // 2), f"{name}: {len(kept)} kept", fill=FG, font=label_font,
                  anchor="mm")
    for x, line, text, hl in placed:
        y = cap_top + line * LINE_H
        if hl and text.strip():
            x0 = x + cap_font.getlength(text) - cap_font.getlength(text.lstrip())  # box the word, not its space
            draw.rectangle((x0 - 1, y + 2, x + cap_font.getlength(text) + 1, y + LINE_H - 2), fill=HIGHLIGHT)
        draw.text((x, y + LINE_H // 2), text, fill=FG, font=cap_font, anchor="lm")
    return canvas


def panel_origin(i: int, ph: int, pw: int, has_title: bool) -> tuple[int, int]:
    """Top-left pixel of panel i (0 = "input") on the canvas."""
    row, col = divmod(i, COLS)
    return PAD + col * (pw + PAD), (TITLE_H if has_title else 0) + PAD + row * (ph + LABEL_H + PAD)


def save_stages_png(path, view, stages, grid, caption_tokens, title=""):
    """render_stages() written atomically to `path` (a .png in an existing directory)."""
    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    if not path.lower().endswith(".png"):
        raise InputError(f"output path {path!r} does not end in .png; the stage picture is a PNG, name it *.png")
    if not os.path.isdir(out_dir):
        raise InputError(f"output directory {out_dir!r} does not exist; create it first or pick another path")
    image = render_stages(view, stages, grid, caption_tokens, title)
    fd, tmp = tempfile.mkstemp(suffix=".png.tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def visualize_request(generator, request, out) -> dict:
    """Runs one request through the engines and draws each stage's kept tokens, with the instruction tokens
    that formed IVTP's pseudo-CLS highlighted. Returns the run's JSON result."""
    from runtime.preprocess import load_image
    result = generator.generate([request], max_new_tokens=1)[0]
    prompt = generator.prompts.encode(request.prompt)
    tokenizer, chosen = generator.prompts.tokenizer, set(result.relevant_tokens)
    caption = [(tokenizer.id_to_token(t), i in chosen) for i, (t, span) in
               enumerate(zip(prompt.suffix_ids, prompt.suffix_spans)) if span is not None]
    image = request.image if isinstance(request.image, Image.Image) else load_image(request.image)
    grid = int(round(generator.facts["num_patches"] ** 0.5))
    title = f"{generator.m.method}: kept visual tokens per stage"
    save_stages_png(out, model_view(image, generator.preprocess_cfg), result.stages, grid, caption, title)
    return result.to_json()
