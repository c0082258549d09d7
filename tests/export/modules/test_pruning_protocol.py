"""A pruning method inside the decoder is one LlmPruner: the segment shows it every layer, asks it at the end,
feeds it its own inputs and emits its outputs. A toy method written here, in the test, runs through it."""
import torch

from export.graphs.parts import language_model, prefill_graph
from export.models.checkpoint import load_checkpoint
from export.modules.pruning import LlmPruner


class KeepEveryOther(LlmPruner):
    """Keeps the even visual positions; counts the layers it saw, and takes a scale it hands back doubled."""
    input_names = ("scale",)
    carry_names = ("scale_out",)

    def begin(self, lm, view, inputs):
        self.trace = []
        return {"scale": inputs[0], "seen": []}

    def observe(self, state, index, layer, attention):
        state["seen"].append(index)
        self.trace.append((index, None if attention.probs is None else tuple(attention.probs.shape)))
        return state

    def wants_probs(self, layer):
        return layer == 2

    def decide(self, state, attention, view):
        kept = torch.arange(0, view.n_vis, 2).expand(attention.q.shape[0], -1)
        return {"kept": kept}, {"scale_out": state["scale"] * 2 + len(state["seen"])}


def test_a_new_in_llm_method_is_one_pruner_class():
    ckpt = load_checkpoint("tiny", None, False)
    pruner = KeepEveryOther()
    graph = prefill_graph(language_model(ckpt), 0, 0, 2, pruner)
    assert graph.input_names[-1] == "scale" and graph.nested[-1] == ["scale"]
    assert graph.output_names[:4] == ["kept", "prefix_hidden", "visual_hidden", "suffix_hidden"]
    assert graph.output_names[4] == "scale_out" and graph.output_names[5:] == [
        f"present.{i}.{k}" for i in range(3) for k in ("key", "value")]
    cfg = ckpt.llava.config.text_config
    h = cfg.hidden_size
    prefix, visual, suffix = torch.randn(2, 3, h), torch.randn(2, 10, h), torch.randn(2, 4, h)
    buffers = [torch.zeros(2, cfg.num_key_value_heads, 20, h // cfg.num_attention_heads) for _ in range(6)]
    with torch.no_grad():
        out = graph.module.inner(prefix, visual, suffix, 3 + torch.arange(10).expand(2, -1),
                                 13 + torch.arange(4).expand(2, -1), torch.ones(2, 4, dtype=torch.long), buffers,
                                 None, [torch.full((2, 1), 5.0)])
    assert out["kept"].tolist() == [[0, 2, 4, 6, 8]] * 2 and out["visual_hidden"].shape == (2, 5, h)
    assert out["scale_out"].tolist() == [[13.0], [13.0]]  # 5 * 2 + three layers seen
    assert pruner.trace == [(0, None), (1, None), (2, (2, 4, 17, 17))]  # probabilities only where it asked
    assert out["prefix_hidden"].shape == prefix.shape
    written = out["present.2.key"]  # the 17 prompt tokens fill slots 0..16 of the 20
    assert written.shape == buffers[4].shape and (written[:, :, :17].abs().sum(-1) > 0).all()
    assert written[:, :, 17:].abs().max() == 0
