"""Image loading and CLIP/LLaVA-1.5 preprocessing with numpy + Pillow only (no torch, no transformers).

Reproduces transformers 5's PIL-backend processors (`CLIPImageProcessorPil`, `LlavaImageProcessorPil`), which
are what `CLIPImageProcessor` / `AutoImageProcessor` resolve to when torchvision is not installed. The torchvision
backend resizes differently (tensor bicubic), so it is not bit-matched.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_IMAGE_PIXELS = 178_956_970  # Pillow's default decompression-bomb limit (~179 megapixels)
# HF resizes the short side to 336 *before* cropping, so a 1x2000 image becomes 336x672000 (~0.9 GB in PIL).
MAX_RESIZED_PIXELS = 2 * MAX_IMAGE_PIXELS
_HF_TYPES = {f"{base}{suffix}" for base in ("CLIPImageProcessor", "LlavaImageProcessor")
             for suffix in ("", "Fast", "Pil")}
# Keys that do not change pixel values for PIL inputs, and keys we accept only at their default value.
_IGNORED_KEYS = {"image_processor_type", "processor_class", "feature_extractor_type", "return_tensors", "device",
                 "disable_grouping", "input_data_format"}
_DEFAULT_ONLY = {"data_format": "channels_first", "crop_pct": None, "pad_size": None, "use_square_size": False}


@dataclass(frozen=True)
class ImagePreprocessConfig:
    """Defaults are LLaVA-1.5's (`llava-hf/llava-1.5-*-hf` preprocessor_config.json)."""

    do_resize: bool = True
    shortest_edge: int | None = 336  # resize so the short side is this; or set height/width instead
    height: int | None = None
    width: int | None = None
    resample: int = 3  # PIL constant; 3 = bicubic
    do_center_crop: bool = True
    crop_height: int = 336
    crop_width: int = 336
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    do_convert_rgb: bool = True
    do_pad: bool = False  # LlavaImageProcessor: pad to square with the mean colour before resizing

    def __post_init__(self):
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            v = (float(v),) * 3 if isinstance(v, (int, float)) else tuple(float(x) for x in v)
            if len(v) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {v}")
            object.__setattr__(self, name, v)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        if (self.shortest_edge is None) == (self.height is None or self.width is None):
            raise ValueError("set either shortest_edge, or height and width (not both), got "
                             f"shortest_edge={self.shortest_edge}, height={self.height}, width={self.width}")
        if self.resample not in range(6):
            raise ValueError(f"resample must be a PIL filter 0..5, got {self.resample}")
        if min(x for x in (self.shortest_edge, self.height, self.width, self.crop_height, self.crop_width)
               if x is not None) < 1:
            raise ValueError(f"sizes must be positive, got {self}")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "ImagePreprocessConfig":
        """Read a Hugging Face preprocessor_config.json dict; ValueError for anything we cannot reproduce."""
        d = dict(d)
        kind = d.get("image_processor_type", "CLIPImageProcessor")
        if kind not in _HF_TYPES:
            raise ValueError(f"unsupported image_processor_type {kind!r}; supported: {sorted(_HF_TYPES)}")
        for key in _IGNORED_KEYS:
            d.pop(key, None)
        for key, default in _DEFAULT_ONLY.items():
            value = d.pop(key, None)
            if value not in (default, None):
                raise ValueError(f"unsupported {key}={value!r}; only {default!r} can be reproduced, remove the key")
        kw, size, crop = {}, d.pop("size", None), d.pop("crop_size", None)
        if isinstance(size, int):  # CLIP/LLaVA have default_to_square=False: an int is the shortest edge
            size = {"height": size, "width": size} if d.pop("default_to_square", False) else {"shortest_edge": size}
        d.pop("default_to_square", None)
        if size is not None:
            if set(size) == {"shortest_edge"}:
                kw["shortest_edge"] = int(size["shortest_edge"])
            elif set(size) == {"height", "width"}:
                kw.update(shortest_edge=None, height=int(size["height"]), width=int(size["width"]))
            else:
                raise ValueError(f"unsupported size={size!r}; use {{'shortest_edge': n}} or {{'height','width'}}")
        if crop is not None:
            crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
            if set(crop) != {"height", "width"}:
                raise ValueError(f"unsupported crop_size={crop!r}; use an int or {{'height','width'}}")
            kw.update(crop_height=int(crop["height"]), crop_width=int(crop["width"]))
        if d.get("do_pad") and not kind.startswith("Llava"):
            # CLIP's do_pad pads a batch to its largest image: a no-op when every output has the same size.
            if not (d.get("do_center_crop", True) or "height" in kw):
                raise ValueError(f"unsupported do_pad=True for {kind} without center crop (pads batch to max size)")
            d["do_pad"] = False
        # Our size fields are not HF keys: HF spells them through `size` / `crop_size` (handled above).
        hf_keys = {f.name for f in dataclasses.fields(cls)} - {"shortest_edge", "height", "width", "crop_height",
                                                                "crop_width"}
        unknown = sorted(set(d) - hf_keys)
        if unknown:
            raise ValueError(f"unsupported preprocessor_config keys {unknown}; "
                             "remove them or extend runtime/preprocess.py")
        return cls(**{k: v for k, v in d.items() if v is not None}, **kw)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImagePreprocessConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown image preprocess keys {unknown} in manifest")
        return cls(**d)


def _to_rgb(image: Image.Image) -> Image.Image:
    # Same as transformers.image_transforms.convert_to_rgb: transparency is composited onto white.
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # note: PIL clips 16-bit/float values to 255, it does not rescale them


def load_image(path, *, apply_exif_orientation: bool = False) -> Image.Image:
    """Decode an image file fully and return it in RGB, with clear InputErrors for bad files.

    The default equals the HF processor given `Image.open(path)` (no EXIF rotation). transformers' own
    `load_image(path)` applies EXIF orientation; pass apply_exif_orientation=True to do the same.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"image file {path!r} does not exist; expected a path to a JPEG/PNG/... file, check the path")
    if os.path.isdir(path):
        raise InputError(f"image path {path!r} is a directory; expected an image file, pass a file inside it")
    if os.path.getsize(path) == 0:
        raise InputError(f"image file {path!r} is empty (0 bytes); expected image data, re-export or re-download it")
    return decode_image(path, f"image file {path!r}", apply_exif_orientation)


def load_image_bytes(data: bytes, what: str = "the image", *, apply_exif_orientation: bool = False) -> Image.Image:
    """load_image for encoded bytes (an upload, a data: URL); `what` names them in the errors."""
    if not data:
        raise InputError(f"{what} is empty (0 bytes); expected image data")
    return decode_image(io.BytesIO(data), what, apply_exif_orientation)


class ImageTooLarge(InputError):
    """Encoded image data over the size a caller accepts."""


def data_url_bytes(url: str, what: str = "the image", max_bytes: int | None = None) -> bytes:
    """The encoded image of a `data:image/<type>;base64,` URL (what clients whose JSON cannot carry bytes send);
    ImageTooLarge, before any decoding, if its data holds more than max_bytes."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise InputError(f"{what} {header[:60]!r}... is not a data:image/<type>;base64, URL")
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes:
        raise ImageTooLarge(f"{what} is over {max_bytes >> 20} MiB encoded; resize it first")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{what}'s base64 data is malformed ({e})") from None


def decode_image(source, what: str, apply_exif_orientation: bool = False) -> Image.Image:
    """A path or a binary file object, decoded fully in RGB; `what` names it in the errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves below
            im = Image.open(source)
    except Image.DecompressionBombError as e:
        raise InputError(f"{what} is too large ({e}); the limit is {MAX_IMAGE_PIXELS} pixels "
                         "(decompression bomb protection), resize it first") from None
    except Exception as e:
        raise InputError(f"{what} is not a readable image ({type(e).__name__}: {e}); "
                         "expected a valid JPEG/PNG/GIF/BMP/TIFF/WebP file, re-save it as PNG or JPEG") from None
    with im:
        w, h = im.size
        if w == 0 or h == 0:
            raise InputError(f"{what} has zero size ({w}x{h}); expected at least 1x1 pixels, re-export the image")
        if w * h > MAX_IMAGE_PIXELS:  # checked before decoding: a tiny file can declare a huge canvas
            raise InputError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {MAX_IMAGE_PIXELS} "
                             "pixels (decompression bomb protection); resize it first")
        try:
            im.load()  # force a full decode so truncated/corrupt data fails here, not later
            if apply_exif_orientation:
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
        except Exception as e:
            raise InputError(f"{what} is corrupt or truncated ({type(e).__name__}: {e}); "
                             "expected a complete image file, re-export or re-download it") from None


def _resize_hw(h: int, w: int, cfg: ImagePreprocessConfig) -> tuple[int, int]:
    if cfg.shortest_edge is None:
        return cfg.height, cfg.width
    short, long = min(h, w), max(h, w)
    new_long = int(cfg.shortest_edge * long / short)  # HF truncates, not rounds
    return (new_long, cfg.shortest_edge) if w <= h else (cfg.shortest_edge, new_long)


def preprocess(image: Image.Image, cfg: ImagePreprocessConfig) -> np.ndarray:
    """One PIL image -> float32 [3, H, W], equal to transformers' PIL-backend CLIP/LLaVA processor output."""
    if cfg.do_convert_rgb:
        image = _to_rgb(image)
    elif image.mode != "RGB":
        raise InputError(f"image mode is {image.mode!r} but do_convert_rgb is False; expected an RGB image, "
                         "convert it with image.convert('RGB') or enable do_convert_rgb")
    x = np.asarray(image)  # uint8 HWC; HF works in CHW but every step is per-pixel, so the layout does not matter
    if cfg.do_pad:  # LLaVA pad_to_square: mean colour truncated to int, image centred (floor offset)
        h, w, _ = x.shape
        side = max(h, w)
        sq = np.empty((side, side, 3), np.uint8)
        sq[:] = [int(m * 255) for m in cfg.image_mean]
        top, left = (side - h) // 2, (side - w) // 2
        sq[top:top + h, left:left + w] = x
        x = sq
    if cfg.do_resize:
        h, w = _resize_hw(x.shape[0], x.shape[1], cfg)
        if h * w > MAX_RESIZED_PIXELS:
            raise InputError(f"a {x.shape[1]}x{x.shape[0]} image resizes to {w}x{h} = {h * w} pixels before the "
                             f"center crop, over the limit of {MAX_RESIZED_PIXELS}; its aspect ratio is too extreme, "
                             "crop or pad it closer to square first")
        resized = Image.fromarray(x).resize((w, h), resample=cfg.resample)  # PIL resize of uint8, as HF
        ch, cw = cfg.crop_height, cfg.crop_width
        if cfg.do_center_crop and h >= ch and w >= cw:  # crop in PIL (exact copy): no numpy copy of a huge image
            top, left = (h - ch) // 2, (w - cw) // 2
            resized = resized.crop((left, top, left + cw, top + ch))
        x = np.asarray(resized)
    if cfg.do_center_crop:
        ch, cw = cfg.crop_height, cfg.crop_width
        h, w = x.shape[:2]
        if h < ch or w < cw:  # HF zero-pads (black, before rescale) with the image centred, extra row at the top
            nh, nw = max(h, ch), max(w, cw)
            padded = np.zeros((nh, nw, 3), x.dtype)
            top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
            padded[top:top + h, left:left + w] = x
            x, h, w = padded, nh, nw
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[top:top + ch, left:left + cw]
    if cfg.do_rescale:
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)  # HF multiplies in float64
    x = x.astype(np.float32)
    if cfg.do_normalize:
        x = (x - np.array(cfg.image_mean, np.float32)) / np.array(cfg.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images, cfg: ImagePreprocessConfig) -> np.ndarray:
    """PIL images -> float32 [B, 3, H, W]; every image must come out the same size (true with center crop)."""
    arrays = [preprocess(im, cfg) for im in images]
    if not arrays:
        raise InputError("preprocess_batch got no images; expected at least one, pass a non-empty list")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"images preprocess to different sizes {sorted(shapes)}; expected one size for a batch, "
                         "enable do_center_crop or use a fixed height/width resize")
    return np.stack(arrays)
