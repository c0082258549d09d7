"""`cli.py eval`: an engine dir's answers to a question file, scored, with the visual tokens, FLOPs and latency of
each request. Any engine dir, any method: it reads only what every Result carries. No torch."""
from dataclasses import dataclass
from pathlib import Path

from evaluation.data import Question, read_questions
from evaluation.flops import RequestFlops
from evaluation.progress import Progress
from evaluation.records import batch_records, write_records
from evaluation.summary import summarize
from runtime.errors import ConfigError, InputError
from runtime.load import open_engine_dir
from runtime.manifest import load_manifest
from runtime.request import Request


@dataclass(frozen=True)
class EvalConfig:
    engine_dir: Path
    data: Path  # the question file (evaluation/data.py)
    limit: int | None = None  # the first N questions only
    max_new_tokens: int = 8  # greedy; answers are a few words
    provider: str | None = None  # cpu | cuda | tensorrt; None: the best available
    batch: int = 1  # requests per generate call; above 1 each request's ms are a share of its batch's
    out: Path | None = None  # the per-request records, JSONL

    def check(self):
        for name in ("limit", "max_new_tokens", "batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer of at least 1, got {value!r}")
        if self.out is not None and (Path(self.out).is_dir() or not Path(self.out).parent.is_dir()):
            raise ConfigError(f"--out {self.out} must be a file in an existing folder; create "
                              f"{Path(self.out).parent} or name another file")


def evaluate(cfg: EvalConfig, progress=None, reference=None) -> tuple[dict, list[dict]]:
    """(summary, per-request records). The question file is read and checked in full, images included, before
    the engines open. `progress` (optional) gets a line now and then. `reference(manifest) -> Generator` (the
    PyTorch oracle, which cli.py builds: this package imports no torch) answers every question too, and each
    record says whether the engines gave its tokens."""
    cfg.check()
    load_manifest(cfg.engine_dir)  # a wrong dir fails at once, not after a long file is checked
    questions = read_questions(cfg.data)[:cfg.limit]
    generator = open_engine_dir(cfg.engine_dir, cfg.provider)
    oracle = reference(generator.m) if reference else None
    flops, records, status = RequestFlops(generator.m), [], Progress(len(questions), progress)
    for start in range(0, len(questions), cfg.batch):
        batch = questions[start:start + cfg.batch]
        results = answer(generator, batch, cfg)
        done = batch_records(batch, results, [flops.tflops(r) for r in results])
        if oracle is not None:
            for record, ours, theirs in zip(done, results, answer(oracle, batch, cfg)):
                record.update(reference_answer=theirs.text, same_as_reference=ours.token_ids == theirs.token_ids)
        records += done
        status.update(records)
    if cfg.out is not None:
        write_records(records, cfg.out)
    about = {"method": generator.m.method, "engine_dir": str(cfg.engine_dir), "data": str(cfg.data),
             "max_new_tokens": cfg.max_new_tokens, "batch": cfg.batch, "provider": cfg.provider}
    return summarize(records, about), records


def answer(generator, batch: list[Question], cfg: EvalConfig) -> list:
    """Greedy answers to a batch; an input the engines refuse (a prompt too long, an image that does not decode)
    is named by its lines."""
    try:
        return generator.generate([Request(q.image, q.prompt) for q in batch], cfg.max_new_tokens)
    except InputError as e:
        lines = f"{batch[0].line}" if len(batch) == 1 else f"{batch[0].line}-{batch[-1].line} (one batch)"
        raise InputError(f"{cfg.data}:{lines}: {e}") from None
