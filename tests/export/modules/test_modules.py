"""The explicit torch modules (the oracle and what gets traced) against Hugging Face, unpruned."""
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from export.methods.ivtp.vision import PrunedVision
from export.models.checkpoint import load_checkpoint
from export.modules.decoder import DecoderLayers, LanguageModelParts, LogitsHead
from export.modules.text_encoder import TokenEmbeddings
from tests.conftest import IMAGES


@pytest.fixture(scope="module")
def ckpt(tiny):
    return load_checkpoint("tiny", None, need_clip=True)


@pytest.fixture(scope="module")
def pixels(tiny):
    processor = AutoProcessor.from_pretrained(tiny.model_dir)
    return processor.image_processor(Image.open(IMAGES / "chelsea.jpg"), return_tensors="pt")["pixel_values"]


def test_vision_without_pruning_equals_hf_features_and_clip_embedding(ckpt, pixels):
    m = ckpt.llava.model
    vision = PrunedVision(m.vision_tower, m.multi_modal_projector, ckpt.clip.visual_projection, 22, {}, 3)
    with torch.no_grad():
        out = vision(pixels)
        hf_features = m.get_image_features(pixel_values=pixels).pooler_output[0]
        hf_cls = ckpt.clip.get_image_features(pixel_values=pixels).pooler_output
    assert out["image_features"].shape == (1, 576, m.config.text_config.hidden_size)
    assert (out["image_features"][0] - hf_features).abs().max().item() < 1e-4  # values ~10: fp32 reordering
    assert (out["cls_joint"] - hf_cls).abs().max().item() < 1e-5  # the CLS-only last layer is exact


def test_vision_pruning_keeps_scheduled_counts_in_raster_order(ckpt, pixels):
    m = ckpt.llava.model
    schedule = {2: (400, "vit.l2"), 5: (300, "vit.l5"), 22: (100, "vit.l22")}
    with torch.no_grad():
        out = PrunedVision(m.vision_tower, m.multi_modal_projector, None, 22, schedule, 3)(pixels)
    previous = set(range(576))
    for stage, count in (("vit.l2", 400), ("vit.l5", 300), ("vit.l22", 100)):
        kept = out[f"kept.{stage}"][0].tolist()
        assert len(kept) == count and kept == sorted(kept) and set(kept) <= previous
        previous = set(kept)
    assert out["image_features"].shape[1] == 100


def test_text_token_embeddings_pool_to_clip_text_features(ckpt):
    tok = AutoProcessor.from_pretrained(ckpt.clip_dir).tokenizer
    ids = tok(["a cat on a red sofa"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        per_token = TokenEmbeddings(ckpt.clip.text_model, ckpt.clip.text_projection)(ids)
        pooled = ckpt.clip.get_text_features(input_ids=ids).pooler_output
    eos = (ids[0] == ckpt.clip.config.text_config.eos_token_id).nonzero()[0, 0]
    assert (per_token[0, eos] - pooled[0]).abs().max().item() < 1e-5


def test_decoder_layers_prefill_and_decode_equal_hf_logits(ckpt, pixels):
    """One DecoderLayers module over the prompt (slots 0..n-1 of buffers with room for one more), then over the
    next token (slot n): HF's logits both times, and the prompt's slots untouched by the step."""
    llava = ckpt.llava
    processor = AutoProcessor.from_pretrained(ckpt.model_dir)
    inputs = processor(images=Image.open(IMAGES / "chelsea.jpg"), text="USER: <image>\nDescribe it. ASSISTANT:",
                       return_tensors="pt")
    ids = inputs["input_ids"]
    image_pos = (ids[0] == llava.config.image_token_id).nonzero()[:, 0]
    p, v = int(image_pos[0]), len(image_pos)
    lm = LanguageModelParts(llava.model.language_model, llava.lm_head)
    layers, head = DecoderLayers(lm, 0, 31), LogitsHead(lm)
    cfg = llava.config.text_config
    n = ids.shape[1]
    past = [torch.zeros(1, cfg.num_key_value_heads, n + 1, cfg.hidden_size // cfg.num_attention_heads)
            for _ in range(64)]
    with torch.no_grad():
        hf = llava(**inputs).logits[:, -1]
        feats = llava.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0][None]
        emb = llava.model.language_model.embed_tokens(ids)
        x = torch.cat([emb[:, :p], feats, emb[:, p + v:]], 1)
        mask = torch.zeros(1, n, n + 1, dtype=torch.bool)
        mask[0, :, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        out = layers(x, torch.arange(n)[None], mask, torch.zeros(1, dtype=torch.long), past)
        assert (head(out["hidden_out"][:, -1]) - hf).abs().max().item() < 1e-4
        assert all(p.abs().max() == 0 for p in past)  # torch leaves the fed buffers as they were
        nxt = hf.argmax(-1)
        hf_next = llava(input_ids=torch.cat([ids, nxt[:, None]], 1), pixel_values=inputs["pixel_values"]).logits[:, -1]
        cached = [out[f"present.{i}.{kind}"] for i in range(32) for kind in ("key", "value")]
        step = layers(llava.model.language_model.embed_tokens(nxt[:, None]), torch.tensor([[n]]),
                      torch.ones(1, 1, n + 1, dtype=torch.bool), torch.tensor([n]), cached)
    assert (head(step["hidden_out"][:, -1]) - hf_next).abs().max().item() < 1e-4
    assert torch.equal(step["present.5.key"][:, :, :n], cached[10][:, :, :n])
    assert step["present.5.key"][:, :, n].abs().max() > 0
