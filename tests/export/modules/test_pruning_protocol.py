"""A pruning method inside the decoder is one LlmPruner: it names the layers it reads, the decoder graph hands out
their queries, and the weight-free prune graph gives it those with the cached keys, feeds it its own inputs and
emits its outputs. A toy method written here, in the test, runs through it."""
import numpy as np
import torch

from export.graphs.parts import language_model, llm_graphs
from export.models.checkpoint import load_checkpoint
from export.modules.pruning import LlmPruner
from runtime import io_names as io
from runtime.prefill import decoder_feed


class KeepEveryOther(LlmPruner):
    """Keeps every other visual token, from the offset its input gives; reads layers 1 and the segment's last."""
    input_names = ("offset",)

    def taps(self, first, last):
        return [1, last]

    def decide(self, taps, view, inputs):
        self.seen = {i: (tuple(t.q.shape), tuple(t.k.shape), t.v) for i, t in taps.items()}
        self.blocks = (view.n_pre, view.n_vis, tuple(view.bias.shape))
        kept = torch.arange(0, view.n_vis - 1, 2).expand(view.suffix_mask.shape[0], -1) + inputs[0]
        return {"kept": kept}


def test_a_new_in_llm_method_is_one_pruner_class():
    ckpt = load_checkpoint("tiny", None, False)
    cfg = ckpt.llava.config.text_config
    h, kv, d = cfg.hidden_size, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    pruner, last = KeepEveryOther(), cfg.num_hidden_layers - 1
    graphs = llm_graphs(language_model(ckpt), [(0, 2), (3, last)], {0: pruner})
    assert list(graphs) == ["decoder.0", "prune.0", "decoder.1", "lm_head"]
    decoder, prune = graphs["decoder.0"], graphs["prune.0"]
    assert decoder.output_names == ["hidden_out"] + [f"present.{i}.{k}" for i in range(3) for k in ("key", "value")] + [
        "q.1", "q.2"]
    assert graphs["decoder.1"].output_names[-1] == f"present.{last}.value"  # no taps where nothing prunes
    assert prune.input_names == io.PRUNE_IN + ["q.1", "q.2", "key.1", "key.2", "offset"]
    assert prune.nested == io.PRUNE_IN + [["q.1", "q.2"], ["key.1", "key.2"], None, None, ["offset"]]
    assert not list(prune.module.parameters())  # no decoder weights in a prune graph

    n_pre, n_vis, n_suf, capacity = 3, 10, 4, 20
    n = n_pre + n_vis + n_suf
    buffers = {f"past_key_values.{i}.{k}": np.zeros((2, kv, capacity, d), np.float32) for i in range(3) for k in ("key", "value")}
    feed = decoder_feed(np.random.default_rng(0).standard_normal((2, n, h)).astype(np.float32),
                        np.tile(np.arange(n, dtype=np.int32), (2, 1)), np.ones((2, n), bool), capacity, buffers)
    with torch.no_grad():
        args = [torch.from_numpy(feed[k]) for k in io.DECODER_IN]
        out = decoder.module.inner(*args, [torch.from_numpy(v) for v in buffers.values()])
        assert out["q.2"].shape == (2, cfg.num_attention_heads, n, d)
        written = out["present.2.key"]  # the 17 prompt tokens fill slots 0..16 of the 20
        assert (written[:, :, :n].abs().sum(-1) > 0).all() and written[:, :, n:].abs().max() == 0
        mask, suffix_mask = args[2], torch.ones(2, n_suf, dtype=torch.long)
        decision = prune.module.inner(mask, n_pre + torch.arange(n_vis).expand(2, -1), suffix_mask,
                                      [out["q.1"], out["q.2"]], [out["present.1.key"], out["present.2.key"]],
                                      None, None, [torch.tensor([[1], [0]])])
    assert decision["kept"].tolist() == [[1, 3, 5, 7, 9], [0, 2, 4, 6, 8]]
    assert pruner.blocks == (n_pre, n_vis, (2, 1, n, n))  # lengths from the inputs' shapes; the prompt's mask
    assert {i: s[:2] for i, s in pruner.seen.items()} == {i: ((2, cfg.num_attention_heads, n, d), (2, kv, n, d)) for i in (1, 2)}
    assert all(s[2] is None for s in pruner.seen.values())  # values only for pruners that read them
