"""The manifest is read into dataclasses in one place and checked at load: every key, the pipeline's graph
references, dim ranges, the files, and each engine's I/O against its record (names, dtypes, symbolic dims)."""
import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from runtime.engine_dir import file_records
from runtime.errors import EngineDirError
from runtime.load import open_engine_dir
from runtime.manifest import FORMAT, Manifest, load_manifest


def edited_copy(engine_dir, tmp_path, edit, name="copy"):
    """A copy of the engine dir whose manifest JSON `edit` changed (and whose file records are redone)."""
    copy = tmp_path / name
    shutil.copytree(engine_dir, copy)
    data = json.loads((copy / "manifest.json").read_text())
    edit(data, copy)
    data["files"] = file_records(copy)
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


def test_a_manifest_reads_back_into_the_same_dataclasses(ivtp_dir):
    m = load_manifest(ivtp_dir)
    assert isinstance(m, Manifest) and m.format == FORMAT
    assert Manifest.from_json(m.to_json(), m.root) == m
    assert [s.stage for s in m.pipeline.segments if s.stage] == [s.name for s in m.stages if s.where == "llm"]
    assert m.pipeline.visual_ids == [[s.name for s in m.stages if s.where == "vision"][-1]]
    assert m.graphs["decoder.0"].dims["capacity.0"] == [1, 632, 4096]
    assert m.graphs["decoder.0"].dims["seq"] == [1, 1, 4096]  # decode steps, the many calls, are the optimum
    assert [(s.decoder, s.prune) for s in m.pipeline.segments] == [(f"decoder.{j}", f"prune.{j}") for j in range(4)] + [
        ("decoder.4", None)]
    assert m.graphs["prune.0"].dims["prompt"] == [1, 632, 4096] and m.graphs["prune.0"].data is None  # no weights


@pytest.mark.parametrize("edit, words", [
    (lambda d, _: d["pipeline"].update(lm_head="head2"), "the pipeline names graph 'head2'"),
    (lambda d, _: d["pipeline"]["segments"][0].update(stage="llm.l99"), "stage 'llm.l99', which the manifest does not"),
    (lambda d, _: d["pipeline"]["segments"][0].update(layers=[0, 3]), "with gaps or overlaps"),
    (lambda d, _: d["pipeline"]["segments"][0].update(prune=None), "but names no prune graph"),
    (lambda d, _: d["pipeline"]["segments"][-1].update(stage=d["pipeline"]["segments"][0]["stage"], prune="prune.0"), "the last segment prunes"),
    (lambda d, _: d["graphs"]["embed"]["dims"].pop("seq"), "graph embed has symbolic input dims ['seq'] without"),
    (lambda d, _: d.update(colour="blue"), f"does not hold a format {FORMAT} manifest"),
    (lambda d, _: d.pop("pipeline"), f"does not hold a format {FORMAT} manifest"),
])
def test_an_inconsistent_manifest_is_refused_with_what_is_wrong(ivtp_dir, tmp_path, edit, words):
    with pytest.raises(EngineDirError, match=words.replace("(", r"\(").replace("[", r"\[")):
        load_manifest(edited_copy(ivtp_dir, tmp_path, edit))


def test_an_engine_whose_dims_differ_from_its_record_is_refused_by_name(none_dir, tmp_path):
    def swap_embed(data, root):
        ids = helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "tokens"])
        table = helper.make_tensor("table", TensorProto.FLOAT, [1026, 64], [0.0] * (1026 * 64))
        out = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "tokens", 64])
        graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["inputs_embeds"])], "embed",
                                  [ids], [out], [table])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
                  str(root / "embed.onnx"))
        (root / "embed.onnx.data").unlink()
        data["graphs"]["embed"]["data"] = None
    with pytest.raises(EngineDirError, match=r"graph embed \(embed.onnx\) does not match the manifest: "
                                             r"input_ids axis 1 is 'tokens', expected 'seq'"):
        open_engine_dir(edited_copy(none_dir, tmp_path, swap_embed))
