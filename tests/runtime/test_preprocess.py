"""runtime/preprocess.py against transformers' own processors (the PIL backend, which is what
CLIPImageProcessor / AutoImageProcessor resolve to without torchvision)."""

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from runtime.errors import InputError
from runtime.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    ImagePreprocessConfig,
    load_image,
    preprocess,
    preprocess_batch,
)

transformers = pytest.importorskip("transformers")
from transformers import AutoImageProcessor, CLIPImageProcessorPil, LlavaImageProcessorPil  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LLAVA15 = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": list(CLIP_MEAN),
    "image_processor_type": "CLIPImageProcessor",
    "image_std": list(CLIP_STD),
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}
CFG = ImagePreprocessConfig()


def hf_kwargs(cfg):
    size = {"shortest_edge": cfg.shortest_edge} if cfg.shortest_edge else {"height": cfg.height, "width": cfg.width}
    return dict(do_resize=cfg.do_resize, size=size, resample=cfg.resample, do_center_crop=cfg.do_center_crop,
                crop_size={"height": cfg.crop_height, "width": cfg.crop_width}, do_rescale=cfg.do_rescale,
                rescale_factor=cfg.rescale_factor, do_normalize=cfg.do_normalize, image_mean=list(cfg.image_mean),
                image_std=list(cfg.image_std), do_convert_rgb=cfg.do_convert_rgb)


@pytest.fixture(scope="module")
def clip():
    return CLIPImageProcessorPil(**hf_kwargs(CFG))


def assert_matches(hf_proc, image, cfg=CFG):
    ours = preprocess(image, cfg)
    ref = hf_proc(image, return_tensors="np")["pixel_values"][0]
    assert ours.dtype == np.float32 and ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.abs(ours - ref).max() <= 1e-5
    return ours


def photo(name, w=None, h=None):
    im = Image.fromarray(getattr(data, name)())
    return im if w is None else im.resize((w, h), Image.BICUBIC)


# --- equality with the HF processor ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,w,h", [
    ("astronaut", None, None), ("coffee", None, None), ("chelsea", None, None), ("camera", None, None),
    ("astronaut", 640, 480), ("coffee", 300, 500), ("chelsea", 1, 1), ("coffee", 7, 1000), ("chelsea", 1000, 7),
    ("astronaut", 335, 337), ("coffee", 336, 336), ("chelsea", 4000, 3000), ("astronaut", 1, 500),
])
def test_photos_match_hf(clip, name, w, h):
    out = assert_matches(clip, photo(name, w, h))
    assert out.shape == (3, 336, 336)


def _odd_modes():
    rgb = photo("astronaut", 120, 90)
    rgba = rgb.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (90, 1))
    rgba.putalpha(Image.fromarray(alpha))
    pal = photo("chelsea", 90, 60).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3
    cam16 = Image.fromarray(data.camera()[:100, :80].astype(np.uint16) * 257)
    return {
        "L": Image.fromarray(data.camera()), "1": Image.fromarray(data.camera()).convert("1"), "RGBA": rgba,
        "LA": rgba.convert("LA"), "P": pal, "P+transparency": pal_t, "CMYK": rgb.convert("CMYK"),
        "I;16": cam16, "I": cam16.convert("I"), "F": Image.fromarray(data.camera()[:50].astype(np.float32)),
    }


@pytest.mark.parametrize("mode", list(_odd_modes()))
def test_odd_modes_match_hf(clip, mode):
    assert_matches(clip, _odd_modes()[mode])


def test_rgba_is_composited_on_white():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black -> white, like HF
    cfg = ImagePreprocessConfig(do_resize=False, do_center_crop=False, do_normalize=False)
    assert np.all(preprocess(im, cfg) == 1.0)


@pytest.mark.parametrize("cfg", [
    ImagePreprocessConfig(do_resize=False),  # image smaller than the crop: HF zero-pads
    ImagePreprocessConfig(shortest_edge=224),  # resized short side 224 < crop 336
    ImagePreprocessConfig(shortest_edge=None, height=200, width=300, crop_height=225, crop_width=301),
    ImagePreprocessConfig(resample=2, do_center_crop=False),
    ImagePreprocessConfig(do_rescale=False, do_normalize=False),
    ImagePreprocessConfig(do_normalize=False, image_mean=0.5, image_std=0.5),
])
def test_other_settings_match_hf(cfg):
    proc = CLIPImageProcessorPil(**hf_kwargs(cfg))
    for im in (photo("coffee", 101, 51), photo("chelsea", 51, 120), photo("astronaut", 1, 1)):
        assert_matches(proc, im, cfg)


def test_llava_pad_to_square_matches_hf():
    cfg = ImagePreprocessConfig(do_pad=True)
    proc = LlavaImageProcessorPil(**hf_kwargs(cfg), do_pad=True)
    for im in (photo("coffee"), photo("chelsea", 51, 120), photo("astronaut", 7, 1000), photo("camera")):
        assert_matches(proc, im, cfg)


def test_batch(clip):
    ims = [photo("astronaut"), photo("coffee", 7, 1000), photo("camera")]
    out = preprocess_batch(ims, CFG)
    ref = clip(ims, return_tensors="np")["pixel_values"]
    assert out.shape == ref.shape == (3, 3, 336, 336)
    assert np.abs(out - ref).max() <= 1e-5
    with pytest.raises(InputError, match="different sizes"):
        preprocess_batch([photo("coffee"), photo("camera")], ImagePreprocessConfig(do_center_crop=False))


# --- config ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    {}, {"size": 336, "crop_size": 336}, {"image_processor_type": "LlavaImageProcessor", "do_pad": True},
    {"size": {"height": 300, "width": 400}, "do_center_crop": False}, {"do_pad": True},
])
def test_from_hf_dict_matches_auto_image_processor(tmp_path, variant):
    d = {**LLAVA15, **variant}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(d))
    proc = AutoImageProcessor.from_pretrained(str(tmp_path))
    assert type(proc).__name__.endswith("Pil")  # no torchvision here: the PIL backend is what HF uses
    cfg = ImagePreprocessConfig.from_hf_dict(d)
    for im in (photo("coffee"), photo("chelsea", 51, 120)):
        assert_matches(proc, im, cfg)


def test_from_hf_dict_defaults_and_round_trip():
    cfg = ImagePreprocessConfig.from_hf_dict(LLAVA15)
    assert cfg == ImagePreprocessConfig()
    assert ImagePreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    other = ImagePreprocessConfig(shortest_edge=None, height=10, width=20, do_pad=True, resample=2)
    assert ImagePreprocessConfig.from_dict(json.loads(json.dumps(other.to_dict()))) == other


@pytest.mark.parametrize("bad,word", [
    ({"size": {"shortest_edge": 336, "longest_edge": 500}}, "size"),
    ({"crop_size": {"shortest_edge": 3}}, "crop_size"),
    ({"image_processor_type": "SiglipImageProcessor"}, "image_processor_type"),
    ({"use_square_size": True}, "use_square_size"),
    ({"do_flip_channel_order": True}, "do_flip_channel_order"),
    ({"do_pad": True, "do_center_crop": False}, "do_pad"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"resample": 9}, "resample"),
    ({"shortest_edge": 224}, "shortest_edge"),
])
def test_from_hf_dict_rejects(bad, word):
    with pytest.raises(ValueError, match=word):
        ImagePreprocessConfig.from_hf_dict({**LLAVA15, **bad})
    with pytest.raises(ValueError, match="unknown"):
        ImagePreprocessConfig.from_dict({**CFG.to_dict(), "bogus": 1})


# --- load_image --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"),
                                      ("1", "BMP"), ("CMYK", "TIFF"), ("LA", "PNG")])
def test_load_image_matches_hf_on_opened_file(clip, tmp_path, mode, fmt):
    im = _odd_modes()[mode] if mode in _odd_modes() else photo("astronaut", 64, 48)
    path = tmp_path / f"x.{fmt.lower()}"
    im.save(path, fmt)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    with Image.open(path) as raw:
        ref = clip(raw, return_tensors="np")["pixel_values"][0]
    assert np.abs(preprocess(loaded, CFG) - ref).max() <= 1e-5


def test_load_image_shapes(tmp_path):
    for w, h in [(1, 1), (1, 2000), (6000, 4000)]:
        p = tmp_path / f"{w}x{h}.png"
        Image.new("L", (w, h), 7).save(p)
        assert load_image(p).size == (w, h)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), c) for c in [(255, 0, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert load_image(p).getpixel((0, 0)) == (255, 0, 0)


def test_exif_orientation_only_on_request(tmp_path):
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    photo("coffee", 60, 40).save(p, exif=exif)
    assert load_image(p).size == (60, 40)  # same as HF given Image.open(path)
    upright = load_image(p, apply_exif_orientation=True)
    assert upright.size == (40, 60)
    ref = transformers.image_utils.load_image(str(p))  # HF's path loader applies EXIF orientation
    assert np.array_equal(np.asarray(upright), np.asarray(ref))


# --- load_image errors -----------------------------------------------------------------------------------------

def _png(width, height):
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(b[24:29])  # keep bit depth, colour type, ...
    b[16:29] = ihdr
    b[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(b)


def _error(path):
    with pytest.raises(InputError) as e:
        load_image(path)
    msg = str(e.value)
    assert str(path) in msg
    return msg


def test_missing_file(tmp_path):
    assert "does not exist" in _error(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    assert "directory" in _error(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert "empty" in _error(p)


def test_text_named_jpg(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("hello, I am not a picture\n")
    msg = _error(p)
    assert "not a readable image" in msg and "re-save" in msg


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    photo("astronaut").save(p, quality=90)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    msg = _error(p)
    assert "truncated" in msg


@pytest.mark.parametrize("side", [15000, 20000])  # over the limit; over 2x the limit (Pillow itself refuses)
def test_decompression_bomb(tmp_path, side):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(side, side))
    msg = _error(p)
    assert "decompression bomb" in msg and "resize it first" in msg and "178956970" in msg


def test_zero_size_png(tmp_path):
    p = tmp_path / "zero.png"
    p.write_bytes(_png(0, 5))
    _error(p)


def test_mode_without_convert_rgb():
    with pytest.raises(InputError, match="do_convert_rgb"):
        preprocess(Image.new("L", (3, 3)), ImagePreprocessConfig(do_convert_rgb=False))


def test_no_torch_or_transformers_import():
    code = ("import sys; import runtime.preprocess; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_extreme_aspect_ratio_refused():
    # HF would resize 1x4000 to 336x1344000 (~1.8 GB) before cropping; we refuse with a clear message instead.
    with pytest.raises(InputError, match="aspect ratio is too extreme"):
        preprocess(Image.new("RGB", (1, 4000)), CFG)
