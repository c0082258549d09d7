"""The training script end to end at a few steps of each stage (the real run is `python -m demo.train`, about half
an hour): it writes a checkpoint pair that exports, and twice gives the same weights."""
import json

import pytest
from safetensors import safe_open

from demo.train import TrainConfig, train
from export.models.dtypes import checkpoint_dtype

STEPS = dict(pool=24, clip_steps=2, clip_batch=8, caption_steps=1, instruct_steps=2, llm_batch=4, held_out=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    outs = [tmp_path_factory.mktemp("train") / name for name in ("a", "b")]
    for out in outs:
        train(TrainConfig(out=out, **STEPS), log=lambda m: None)
    return outs


def test_a_run_writes_fp16_llava_and_clip_dirs_with_its_curves(trained):
    out = trained[0]
    assert checkpoint_dtype(out / "llava") == "fp16" and checkpoint_dtype(out / "clip") == "fp16"
    log = json.loads((out / "training.json").read_text())
    assert [row["step"] for row in log["curves"]["clip"]] == [0, 1]
    assert [row["step"] for row in log["curves"]["instruct"]] == [2]
    assert set(log["curves"]["instruct"][0]) >= {"loss", "grounding", "acc", "colour", "pattern", "exist", "side"}
    assert log["spec"]["llm_layers"] == 6 and log["spec"]["vit_layers"] == 6


def test_two_runs_with_one_seed_give_the_same_weights(trained):
    for part in ("llava", "clip"):
        a, b = (safe_open(str(d / part / "model.safetensors"), "pt") for d in trained)
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys())


def test_the_vision_tower_is_one_set_of_weights_in_both_dirs(trained):
    llava = safe_open(str(trained[0] / "llava" / "model.safetensors"), "pt")
    clip = safe_open(str(trained[0] / "clip" / "model.safetensors"), "pt")
    for k in clip.keys():
        if k.startswith("vision_model."):
            assert clip.get_tensor(k).equal(llava.get_tensor(k.replace("vision_model.", "vision_tower.", 1)))
