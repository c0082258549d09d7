"""`cli.py check`: exported tiny engine dirs pass; graphs TensorRT would refuse fail with the rule that names why."""
import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

import cli
from engines.tensorrt.check import failed
from engines.tensorrt.rules import MAX_TOPK_K, SUPPORTED_OPS
from runtime.tensorrt.check import check_engine_dir


def model(nodes, inputs, outputs, initializers=(), domains=()):
    graph = helper.make_graph(nodes, "broken", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", 23)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def topk(k_input, initializers=()):
    node = helper.make_node("TopK", ["scores", k_input], ["values", "indices"], name="select")
    return model([node], [vi("scores", TensorProto.FLOAT, ["batch", "seq"])]
                 + ([vi(k_input, TensorProto.INT64, [1])] if not initializers else []),
                 [vi("values", TensorProto.FLOAT, ["batch", "k"]), vi("indices", TensorProto.INT64, ["batch", "k"])],
                 initializers)


BROKEN = {
    "unsupported-op": model([helper.make_node("Unique", ["x"], ["y"]),
                             helper.make_node("FusedMatMul", ["y", "y"], ["z"], domain="com.microsoft")],
                            [vi("x", TensorProto.FLOAT, ["batch", 4])], [vi("z", TensorProto.FLOAT, None)],
                            domains=["com.microsoft"]),
    "topk-dynamic-k": topk("k"),
    "topk-k-too-large": topk("k", [helper.make_tensor("k", TensorProto.INT64, [1], [5000])]),
    "dtype": model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)],
                   [vi("x", TensorProto.FLOAT, ["batch", 4])], [vi("y", TensorProto.DOUBLE, ["batch", 4])]),
    "unnamed-dim": model([helper.make_node("Relu", ["x"], ["y"])],
                         [vi("x", TensorProto.FLOAT, [None, 4])], [vi("y", TensorProto.FLOAT, [None, 4])]),
    "unknown-dim": model([helper.make_node("Relu", ["x"], ["y"])],
                         [vi("x", TensorProto.FLOAT, ["batch", "s0"])], [vi("y", TensorProto.FLOAT, ["batch", "s0"])]),
    "attention-io": model([helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["o", "pk_out", "pv_out"])],
                          [vi(n, TensorProto.FLOAT, ["batch", 4, "seq", 16]) for n in ("q", "k", "v")]
                          + [vi(n, TensorProto.FLOAT, ["batch", 4, "capacity.0", 16]) for n in ("pk", "pv")],
                          [vi(n, TensorProto.FLOAT, None) for n in ("o", "pk_out", "pv_out")]),
}


def with_broken_embed(engine_dir, tmp_path, broken: onnx.ModelProto):
    """A copy of an engine dir whose `embed` graph is replaced by `broken`."""
    copy = tmp_path / "copy"
    shutil.copytree(engine_dir, copy)
    record = json.loads((copy / "manifest.json").read_text())["graphs"]["embed"]
    onnx.save(broken, str(copy / record["file"]))
    return copy


def test_the_exported_none_dir_passes_at_opset_18_and_at_23_names_attention_norms_and_rope(none_dir, exported):
    assert check_engine_dir(exported("none", opset=18), trt_version=None) == []
    problems = check_engine_dir(none_dir, trt_version=None)
    assert {(p.kind, p.rule) for p in problems} == {("warning", "attention-version"), ("error", "unsupported-op")}
    assert failed(problems)


def test_tensorrt_11_is_told_that_fp32_graphs_make_fp32_plans_and_fp16_graphs_are_clean(exported):
    problems = check_engine_dir(exported("none", opset=18), trt_version=(11, 0))
    assert [(p.kind, p.rule) for p in problems] == [("warning", "strongly-typed")]
    assert "export again with --dtype fp16" in problems[0].message
    assert not [p for p in check_engine_dir(exported("ivtp", dtype="fp16"), trt_version=(11, 0))
                if p.rule == "strongly-typed"]


def test_the_exported_ivtp_dir_is_clean_for_tensorrt_10_14_but_for_the_ops_opset_18_writes_out(ivtp_dir):
    """Top-k and its ascending sort both use a constant k, and integer I/O is int32."""
    problems = check_engine_dir(ivtp_dir, trt_version=(10, 14))
    assert {p.rule for p in problems} == {"unsupported-op"} and all("--opset 18" in p.message for p in problems)


def test_int64_graph_io_is_a_warning_that_names_the_tensors(exported, tmp_path):
    int64_embed = model([helper.make_node("Identity", ["input_ids"], ["ids"])],
                        [vi("input_ids", TensorProto.INT64, ["batch", "seq"])],
                        [vi("ids", TensorProto.INT64, ["batch", "seq"])])
    problems = check_engine_dir(with_broken_embed(exported("none", opset=18), tmp_path, int64_embed), (10, 14))
    assert [(p.graph, p.kind, p.rule) for p in problems] == [("embed", "warning", "int64-io")]
    assert "(input_ids, ids)" in problems[0].message and "int32 serves" in problems[0].message
    assert not failed(problems) and failed(problems, strict=True)


def test_opset_23_graphs_need_tensorrt_10_14_for_attention_and_opset_18_for_norms_and_rope(exported):
    """The default export fuses for ONNX Runtime what TensorRT 10's parser does not import; the fix is named."""
    old = [p for p in check_engine_dir(exported("none"), trt_version=(10, 3, 0)) if p.kind == "error"]
    attention = [p for p in old if p.rule == "attention-version"]
    assert {p.graph for p in attention} == {"vision", "decoder.0"}
    assert "10.3.0" in attention[0].message and "--opset 18" in attention[0].message
    new = check_engine_dir(exported("none"), trt_version=(10, 14, 1))
    assert sorted((p.graph, p.rule, p.message.split()[1]) for p in new) == [
        ("decoder.0", "unsupported-op", "RMSNormalization"), ("decoder.0", "unsupported-op", "RotaryEmbedding"),
        ("lm_head", "unsupported-op", "RMSNormalization")]
    assert all("--opset 18" in p.message for p in new)
    assert {p for p in old if p.rule != "attention-version"} == set(new)


def test_an_opset_18_export_writes_attention_out_and_passes_for_jetpack_tensorrt(exported, capsys):
    """JetPack 6's TensorRT 10.3 cannot parse ONNX Attention; --opset 18 exports MatMul + Softmax + MatMul,
    validated against torch like any export, and generates the opset 23 engines' tokens."""
    from runtime.load import open_engine_dir
    from runtime.request import Request
    from tests.conftest import IMAGES, PROMPTS
    old = exported("none", opset=18)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["opset"] == 18
    for record in manifest["graphs"].values():
        graph = onnx.load(str(old / record["file"]), load_external_data=False)
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [18]
        assert not {n.op_type for n in graph.graph.node} & {"Attention", "RMSNormalization", "RotaryEmbedding"}
    assert [p for p in check_engine_dir(old, trt_version=(10, 3, 0)) if p.kind == "error"] == []
    assert cli.main(["check", str(old), "--tensorrt", "10.3"]) == 0
    assert cli.main(["check", str(exported("none")), "--tensorrt", "10.3"]) == 2
    assert "--opset 18" in capsys.readouterr().out
    assert cli.main(["check", str(old), "--tensorrt", "ten"]) == 2
    assert "a version like 10.3" in capsys.readouterr().err
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "rocket.jpg", PROMPTS[0])]
    tokens = [r.token_ids for r in open_engine_dir(old).generate(requests, max_new_tokens=8)]
    assert tokens == [r.token_ids for r in open_engine_dir(exported("none")).generate(requests, max_new_tokens=8)]


def test_export_refuses_an_opset_torch_cannot_write(tmp_path, capsys):
    assert cli.main(["export", "--method", "none", "--out", str(tmp_path / "x"), "--opset", "17"]) == 2
    err = capsys.readouterr().err
    assert "--opset 17 is not one torch's exporter writes" in err and "choose 18..23" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_broken_graphs_fail_with_the_rule_that_names_why(exported, tmp_path, rule):
    problems = check_engine_dir(with_broken_embed(exported("none"), tmp_path, BROKEN[rule]), trt_version=(10, 14))
    fused = set(check_engine_dir(exported("none"), trt_version=(10, 14)))  # opset 23's norms and RoPE
    errors = [p for p in problems if p.kind == "error" and p not in fused]
    assert failed(problems) and errors
    assert {p.graph for p in errors} == {"embed"}
    assert {p.rule for p in errors} == {rule}


def test_messages_name_the_culprit_and_the_fix(exported, tmp_path):
    def messages(rule):
        problems = check_engine_dir(with_broken_embed(exported("none"), tmp_path / rule, BROKEN[rule]), (10, 14))
        return " | ".join(p.message for p in problems if p.rule == rule and p.graph == "embed")
    assert [m.split(" is not")[0] for m in messages("unsupported-op").split(" | ")] == [
        "op Unique", "op com.microsoft::FusedMatMul"]
    too_large = messages("topk-k-too-large")
    assert "TopK select has k=5000" in too_large and f"k <= {MAX_TOPK_K}" in too_large
    dynamic = messages("topk-dynamic-k")
    assert "tensor 'k'" in dynamic and "constant initializer" in dynamic
    dtype = messages("dtype")
    assert "tensor y is double" in dtype and "float64 -> float32" in dtype
    assert "input x axis 0 is dynamic without a name" in messages("unnamed-dim")
    unknown = messages("unknown-dim")
    assert "'s0'" in unknown and "capacity.<n>" in unknown
    assert "past_key/past_value" in messages("attention-io")


def test_topk_with_a_constant_node_k_within_the_limit_passes(exported, tmp_path):
    k = helper.make_node("Constant", [], ["k"], value=helper.make_tensor("v", TensorProto.INT64, [1], [64]))
    node = helper.make_node("TopK", ["scores", "k"], ["values", "indices"])
    good = model([k, node], [vi("scores", TensorProto.FLOAT, ["batch", "seq"])],
                 [vi("values", TensorProto.FLOAT, ["batch", 64]), vi("indices", TensorProto.INT32, ["batch", 64])])
    problems = check_engine_dir(with_broken_embed(exported("none"), tmp_path, good), (10, 14))
    assert [p for p in problems if p.graph == "embed"] == []


def test_supported_ops_cover_every_op_the_exporter_writes_and_refuse_opset_23_norms():
    assert {"Attention", "LayerNormalization", "Gelu", "CastLike", "TopK", "GatherElements", "Reshape"} <= SUPPORTED_OPS
    assert {"RMSNormalization", "RotaryEmbedding", "Unique", "BitShift", "DFT"}.isdisjoint(SUPPORTED_OPS)


def test_cli_check_exits_0_on_a_good_dir_2_on_a_broken_one_and_2_under_strict(exported, tmp_path, capsys):
    good = exported("none", opset=18)
    assert cli.main(["check", str(good)]) == 0
    assert "every graph passes the TensorRT checks" in capsys.readouterr().out
    assert cli.main(["check", str(good), "--strict"]) == 0  # at opset 18 not even a warning
    capsys.readouterr()
    bad = with_broken_embed(good, tmp_path, BROKEN["topk-dynamic-k"])
    assert cli.main(["check", str(bad), "--json"]) == 2
    rows = json.loads(capsys.readouterr().out)
    assert {(r["graph"], r["rule"], r["kind"]) for r in rows if r["kind"] == "error"} == {
        ("embed", "topk-dynamic-k", "error")}
    assert cli.main(["check", str(tmp_path / "missing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
