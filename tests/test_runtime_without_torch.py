"""An edge device has the runtime's dependencies and no torch: `cli.py run`, `eval` and the engine half of `profile`
work there, with torch and transformers made unimportable, and give what they give in-process."""
import json
import subprocess
import sys

import pytest

from evaluation.evaluate import EvalConfig, evaluate
from runtime.load import open_engine_dir
from runtime.request import Request
from tests.conftest import IMAGES, ROOT

BLOCKED = ("torch", "transformers")


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    """PYTHONPATH with packages named torch and transformers first, each raising ImportError when imported."""
    blockers = tmp_path_factory.mktemp("blockers")
    for name in BLOCKED:
        (blockers / name).mkdir()
        (blockers / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {"PYTHONPATH": f"{blockers}:{ROOT}", "PATH": "/usr/bin:/bin"}


def cli_without_torch(env, *args):
    done = subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_the_blockers_really_block(no_torch_env):
    done = subprocess.run([sys.executable, "-c", "import torch"], cwd=ROOT, env=no_torch_env, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "torch is not installed here" in done.stderr


def test_run_generates_without_torch_what_it_generates_with_it(ivtp_dir, no_torch_env):
    image, prompt = IMAGES / "chelsea.jpg", "What animal is on the sofa?"
    done = cli_without_torch(no_torch_env, "run", ivtp_dir, "--image", image, "--prompt", prompt,
                             "--max-new-tokens", 4, "--json")
    got = json.loads(done.stdout)
    want = open_engine_dir(ivtp_dir).generate([Request(image, prompt)], max_new_tokens=4)[0]
    assert got["token_ids"] == want.token_ids and got["stages"] == want.stages
    assert got["visual_tokens"] == want.visual_tokens


def test_profile_times_the_engines_without_torch_and_says_why_pytorch_is_missing(none_dir, no_torch_env):
    done = cli_without_torch(no_torch_env, "profile", none_dir, "--runs", 1, "--max-new-tokens", 2, "--json")
    report = json.loads(done.stdout)
    assert report["engines"]["prefill_ms"] > 0 and report["visual_tokens_final"] == 576
    assert "torch is not installed here" in report["pytorch_skipped"] and "[export]" in report["pytorch_skipped"]
    assert "reference" not in report and "pytorch" not in report
    assert report["flops"]["pruned_tflops"] == report["flops"]["unpruned_tflops"]


def test_eval_scores_without_torch_what_it_scores_with_it(none_dir, no_torch_env, tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"image": str(IMAGES / "chelsea.jpg"), "question": "What animal?", "answer": "cat"}) + "\n"
                    + json.dumps({"image": str(IMAGES / "coffee.jpg"), "question": "Is it hot?", "answer": "yes",
                                  "type": "yes/no"}) + "\n")
    done = cli_without_torch(no_torch_env, "eval", none_dir, "--data", data, "--max-new-tokens", 3, "--json")
    got = json.loads(done.stdout)
    want, _ = evaluate(EvalConfig(none_dir, data, max_new_tokens=3))
    same = ("n", "accuracy", "by_type", "wrong", "mean_visual_tokens", "tflops", "method")
    assert {k: got[k] for k in same} == {k: want[k] for k in same} and got["mean_visual_tokens"] == 576
    assert "[eval] 2/2 (100%)" in done.stderr


def test_every_engine_only_command_answers_help_without_torch(no_torch_env):
    for command in ("run", "eval", "profile", "visualize", "check", "build", "flops"):
        assert "usage" in cli_without_torch(no_torch_env, command, "--help").stdout


def test_export_without_torch_says_which_extra_to_install(no_torch_env, tmp_path):
    done = subprocess.run([sys.executable, "cli.py", "export", "--method", "none", "--out", str(tmp_path / "x")],
                          cwd=ROOT, env=no_torch_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: `export` needs")
    assert "pip install -e '.[export]'" in done.stderr and list(tmp_path.iterdir()) == []
