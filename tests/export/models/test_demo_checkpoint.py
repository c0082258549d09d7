"""`--model demo` names the trained checkpoint pair in assets/demo-model; where a checkout has none, it says how to
make one."""
import pytest

from export.models.demo import demo_model
from runtime.errors import ConfigError


def test_a_missing_demo_model_is_refused_with_the_training_command(tmp_path):
    with pytest.raises(ConfigError, match=r"--model demo: there is no trained demo model in this checkout .*"
                                          rf"python -m demo\.train --out {tmp_path}; or pass --model tiny"):
        demo_model(tmp_path)


def test_a_trained_pair_resolves_to_its_llava_and_clip_dirs(tmp_path):
    for part in ("llava", "clip"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text("{}")
    ckpt = demo_model(tmp_path)
    assert (ckpt.model_dir, ckpt.clip_dir) == (tmp_path / "llava", tmp_path / "clip")
