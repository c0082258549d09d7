"""lmms-eval against `cli.py serve`, checked against `cli.py eval` on the same questions.

    python -m benchmarks.lmms_eval_serve ENGINE_DIR --data FILE.jsonl [--lmms-eval /work/lmms-venv/bin/lmms-eval]

1. writes an lmms-eval task folder (WORK/task: a YAML, utils.py and docs.jsonl) from the question file: a local
   "json" dataset (dataset_path: json, dataset_kwargs.data_files), so nothing comes from the hub. utils.py scores
   with prunevlm's own evaluation/scoring.py (is_correct), imported from this checkout, so both sides score alike;
   multiple-choice prompts are built by evaluation/data.py as `cli.py eval` builds them;
2. starts `cli.py serve ENGINE_DIR --no-triton` on a free loopback port and waits for /health;
3. runs lmms-eval (`--model openai_compatible`, one request at a time, greedy, --max-new-tokens) with
   HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1, and saves its command line to WORK/lmms_eval_command.sh;
4. reads lmms-eval's results JSON and logged samples;
5. runs `cli.py eval ENGINE_DIR --data FILE.jsonl --json --out WORK/cli_eval.jsonl` on the same questions;
6. prints both accuracies and the per-question agreement (verdicts and the answer texts themselves) and exits 1
   where the accuracies, any verdict or any answer text differ.

lmms-eval lives in a venv of its own (it needs torch); this script runs with the project's Python and starts
lmms-eval by the path given in --lmms-eval. See the README, Measuring accuracy.
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from evaluation.data import read_questions
from serving.server import free_ports

ROOT = Path(__file__).resolve().parent.parent

TASK = "prunevlm_local"
MARKER = ".lmms_eval_serve"

TASK_YAML = """\
# Written by benchmarks/lmms_eval_serve.py from {source}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""

TASK_UTILS = '''\
"""lmms-eval hooks for a prunevlm question file (written by benchmarks/lmms_eval_serve.py).

Each doc of docs.jsonl is one question as `cli.py eval` reads it: the image's absolute path, the prompt exactly
as cli.py eval sends it (multiple-choice options and instruction included), the reference (a letter for multiple
choice), the choices and the type. Scoring is prunevlm's own, imported from its checkout."""
import sys

from PIL import Image

PRUNEVLM_ROOT = {root!r}
if PRUNEVLM_ROOT not in sys.path:
    sys.path.insert(0, PRUNEVLM_ROOT)

from evaluation.scoring import is_correct  # noqa: E402


def doc_to_visual(doc):
    # As stored: lmms-eval re-encodes it losslessly (PNG, its default LMMS_IMAGE_ENCODE_FORMAT) into the data: URL,
    # and the server converts it to RGB as cli.py eval does.
    image = Image.open(doc["image"])
    image.load()
    return [image]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    prediction = results[0]
    correct = is_correct(prediction, doc["answer"], doc.get("choices") or None)
    return {{"accuracy": 1.0 if correct else 0.0}}
'''


def write_task(questions, source: Path, folder: Path, max_new_tokens: int) -> Path:
    """The task folder for --include_path: docs.jsonl (one doc per question), the YAML and utils.py."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / "docs.jsonl"
    with docs.open("w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"line": q.line, "id": None if q.id is None else str(q.id), "type": q.type,
                                "image": str(Path(q.image).resolve()), "prompt": q.prompt, "answer": q.answer,
                                "choices": list(q.choices) if q.choices else None}) + "\n")
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(source=source, task=TASK, docs=json.dumps(str(docs)),
                                                          max_new_tokens=max_new_tokens))
    (folder / "utils.py").write_text(TASK_UTILS.format(root=str(ROOT)))
    return folder


class Server:
    """`cli.py serve DIR --no-triton` on a free loopback port, until /health answers."""

    def __init__(self, engine_dir: Path, log: Path, timeout_s: float):
        (self.port,) = free_ports(1)
        self.cmd = [sys.executable, str(ROOT / "cli.py"), "serve", str(engine_dir), "--no-triton",
                    "--host", "127.0.0.1", "--port", str(self.port), "--max-batch", "1"]
        self.log = log.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cli.py serve exited with {self.proc.returncode} before /health answered; "
                                   f"see {log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"cli.py serve gave no /health in {timeout_s:.0f} s; see {log}")
            time.sleep(0.5)
        with urllib.request.urlopen(self.url + "/v1/models", timeout=10) as r:
            self.model = json.load(r)["data"][0]["id"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: the server's own clean stop
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def lmms_eval_command(lmms_eval: str, task_dir: Path, base_url: str, model: str, out: Path) -> list[str]:
    model_args = ",".join([f"model={model}", f"base_url={base_url}", "api_key=EMPTY", "num_concurrent=1",
                           "prefix_aware_queue=False", "max_retries=1", "timeout=600"])
    return [lmms_eval, "--model", "openai_compatible", "--model_args", model_args, "--tasks", TASK,
            "--include_path", str(task_dir), "--batch_size", "1", "--output_path", str(out), "--log_samples",
            "--verbosity", "INFO"]


def offline_env(work: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "hf-datasets-cache"), WANDB_MODE="disabled", OPENAI_API_KEY="EMPTY")
    env.pop("OPENAI_API_BASE", None)
    return env


def read_lmms_results(out: Path, lines: list[int]) -> tuple[dict, dict[int, str], dict[int, float]]:
    """(the task's results entry, line -> lmms-eval's answer text, line -> its score) from the newest run in out.
    A logged sample names its doc by doc_id, the doc's index in docs.jsonl; `lines` maps that index to the line."""
    results = sorted(out.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    samples = sorted(out.rglob(f"*_samples_{TASK}.jsonl"), key=lambda p: p.stat().st_mtime)
    if not results or not samples:
        raise RuntimeError(f"lmms-eval wrote no results under {out} (it exits 0 after some errors); see "
                           f"{out.parent / 'lmms_eval.log'}")
    entry = json.loads(results[-1].read_text())["results"][TASK]
    texts, scores = {}, {}
    for line in samples[-1].read_text().splitlines():
        s = json.loads(line)
        resps = s.get("filtered_resps") or s.get("resps")
        while isinstance(resps, list):
            resps = resps[0]
        line = lines[s["doc_id"]]
        texts[line], scores[line] = resps, float(s["accuracy"])
    return entry, texts, scores


def accuracy_of(entry: dict) -> float:
    for key in ("accuracy,none", "accuracy"):
        if key in entry:
            return float(entry[key])
    raise RuntimeError(f"no accuracy in lmms-eval's results: {entry}")


def prepare_work(work: Path | None) -> Path:
    """A fresh work folder: a new temp one, or `work` emptied where an earlier run of this script wrote it."""
    if work is None:
        work = Path(tempfile.mkdtemp(prefix="lmms-eval-serve-"))
    work = work.resolve()
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).exists():
            sys.exit(f"error: --work {work} is not empty and was not written by this script; give a new folder")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("written by benchmarks/lmms_eval_serve.py; emptied by its next run here\n")
    return work


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine_dir", type=Path)
    p.add_argument("--data", type=Path, required=True, metavar="FILE.jsonl", help="a cli.py eval question file")
    p.add_argument("--lmms-eval", default=shutil.which("lmms-eval") or "lmms-eval", metavar="PATH",
                   help="the lmms-eval executable of its own venv (default: lmms-eval on PATH)")
    p.add_argument("--work", type=Path, metavar="DIR", help="task folder, logs, lmms-eval's output and the saved "
                   "command; a new or empty folder, or one an earlier run wrote (default: a new temp folder)")
    p.add_argument("--limit", type=int, metavar="N", help="the first N questions only (both sides)")
    p.add_argument("--max-new-tokens", type=int, default=8, metavar="N", help="both sides (cli.py eval's default 8)")
    p.add_argument("--server-timeout", type=float, default=600, metavar="S", help="wait this long for /health")
    args = p.parse_args(argv)

    work = prepare_work(args.work)
    questions = read_questions(args.data)[:args.limit]  # cli.py eval's own reading and checks
    task_dir = write_task(questions, args.data.resolve(), work / "task", args.max_new_tokens)
    print(f"[lmms] task {TASK}: {len(questions)} questions in {task_dir}", file=sys.stderr)

    server = Server(args.engine_dir, work / "serve.log", args.server_timeout)
    try:
        print(f"[lmms] cli.py serve up at {server.url} serving {server.model!r}", file=sys.stderr)
        cmd = lmms_eval_command(args.lmms_eval, task_dir, server.url + "/v1", server.model, work / "lmms-out")
        env_prefix = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled "
        (work / "lmms_eval_command.sh").write_text(
            "#!/bin/sh\n# lmms-eval as benchmarks/lmms_eval_serve.py ran it, against this server (start it first):\n"
            f"#   {shlex.join(server.cmd)}\n{env_prefix}{shlex.join(cmd)}\n")
        print(f"[lmms] {env_prefix}{shlex.join(cmd)}", file=sys.stderr)
        start = time.perf_counter()
        with (work / "lmms_eval.log").open("w") as log:
            rc = subprocess.run(cmd, env=offline_env(work), stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                check=False).returncode
        lmms_s = time.perf_counter() - start
    finally:
        server.close()
    if rc != 0:
        print(f"lmms-eval failed (rc {rc}); see {work / 'lmms_eval.log'}", file=sys.stderr)
        return 2
    entry, lmms_texts, lmms_scores = read_lmms_results(work / "lmms-out", [q.line for q in questions])

    cli = [sys.executable, str(ROOT / "cli.py"), "eval", str(args.engine_dir), "--data", str(args.data), "--json",
           "--max-new-tokens", str(args.max_new_tokens), "--out", str(work / "cli_eval.jsonl")]
    if args.limit:
        cli += ["--limit", str(args.limit)]
    start = time.perf_counter()
    with (work / "cli_eval.log").open("w") as log:
        done = subprocess.run(cli, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    cli_s = time.perf_counter() - start
    if done.returncode != 0:
        print(f"cli.py eval failed (rc {done.returncode}); see {work / 'cli_eval.log'}", file=sys.stderr)
        return 2
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    records = {r["line"]: r for r in map(json.loads, (work / "cli_eval.jsonl").read_text().splitlines())}

    lines = [q.line for q in questions]
    missing = [n for n in lines if n not in lmms_texts or n not in records]
    verdicts = [n for n in lines if n not in missing and bool(lmms_scores[n]) != records[n]["correct"]]
    texts = [n for n in lines if n not in missing and lmms_texts[n] != records[n]["prediction"]]
    lmms_acc, cli_acc = accuracy_of(entry), float(summary["accuracy"])
    report = {"questions": len(questions), "lmms_eval_accuracy": lmms_acc, "cli_eval_accuracy": cli_acc,
              "lmms_eval_n": len(lmms_texts), "cli_eval_n": summary["n"],
              "verdicts_agree": len(lines) - len(missing) - len(verdicts),
              "answers_identical": len(lines) - len(missing) - len(texts), "missing": missing,
              "verdict_differs": verdicts, "answer_differs": [
                  {"line": n, "lmms_eval": lmms_texts[n], "cli_eval": records[n]["prediction"]} for n in texts],
              "lmms_eval_s": round(lmms_s, 1), "cli_eval_s": round(cli_s, 1),
              "lmms_eval_command": str(work / "lmms_eval_command.sh")}
    (work / "comparison.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    same = abs(lmms_acc - cli_acc) < 1e-9 and not (missing or verdicts or texts)
    print(f"lmms-eval {lmms_acc:.4f} vs cli.py eval {cli_acc:.4f} on {len(questions)} questions: "
          f"{report['verdicts_agree']} verdicts agree, {report['answers_identical']} answers identical -> "
          f"{'SAME' if same else 'DIFFERENT'}", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
