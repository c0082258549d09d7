"""The demo model (`--model demo`): LLaVA-1.5's architecture at toy widths, trained by `python -m demo.train` on the
demo task (cli.py demo-data) and shipped in the repo, fp16 in the Hugging Face layout, so it loads through the same
code as a downloaded llava-hf checkpoint."""
from pathlib import Path

from export.models.embedded import EmbeddedCheckpoint
from runtime.errors import ConfigError

DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo-model"


def demo_model(root: Path = DEMO_DIR) -> EmbeddedCheckpoint:
    ckpt = EmbeddedCheckpoint(model_dir=root / "llava", clip_dir=root / "clip")
    for d in (ckpt.model_dir, ckpt.clip_dir):
        if not (d / "config.json").is_file():
            raise ConfigError(f"--model demo: there is no trained demo model in this checkout ({d / 'config.json'} is "
                              f"missing). Train one into place, about 30 minutes on 2 cores: python -m demo.train "
                              f"--out {root}; or pass --model tiny or a llava-hf checkpoint dir.")
    return ckpt
