"""`cli.py eval` end to end on the tiny model's unpruned engine dir. Its weights are random, so the reference
answers are what the engines answer (three lines) plus one multiple-choice line they get wrong: accuracy 0.75."""
import json
import shutil
from dataclasses import replace
from statistics import mean

import pytest

import cli
from evaluation.data import read_questions
from evaluation.evaluate import EvalConfig, evaluate
from evaluation.flops import RequestFlops
from evaluation.scoring import first_line, is_correct, normalize
from export.methods.registry import Schedule
from export.profiling.flops import count_flops, flops_report, tokens_per_layer
from runtime.errors import InputError
from runtime.load import open_engine_dir
from runtime.manifest import Stage, read_manifest
from runtime.request import Request, Result
from tests.conftest import IMAGES

LINES = [  # (photo, question, type); the answers come from the engines, but line 3's
    ("chelsea.jpg", "What animal is on the sofa?", "open"),
    ("coffee.jpg", "What is in the cup?", "open"),
    ("rocket.jpg", "What is launching?", "mc"),
    ("astronaut.jpg", "How many people are there?", None),
]
CHOICES = ["a car", "a rocket", "a bird"]
MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def case(exported, tmp_path_factory):
    """(engine dir, question file, the engines' answer per line). Images sit beside the file, named relatively."""
    engine_dir, folder = exported("none"), tmp_path_factory.mktemp("questions")
    (folder / "photos").mkdir()
    items = []
    for photo, question, kind in LINES:
        shutil.copy(IMAGES / photo, folder / "photos" / photo)
        items.append({"image": f"photos/{photo}", "question": question, "answer": "?", **({"type": kind} if kind else {})})
    items[2].update(choices=CHOICES, answer="B")
    path = folder / "questions.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    questions = read_questions(path)
    texts = [r.text for r in open_engine_dir(engine_dir).generate([Request(q.image, q.prompt) for q in questions],
                                                                  MAX_NEW_TOKENS)]
    for item, text in zip(items, texts):
        if "choices" not in item:
            assert normalize(first_line(text)), f"the tiny model's answer {text!r} normalizes to nothing"
            item["answer"] = first_line(text)
    assert not is_correct(texts[2], "B", CHOICES), f"the tiny model happened to answer B: {texts[2]!r}"
    path.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    return engine_dir, path, texts


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_summary_scores_every_line_by_type_with_tokens_flops_and_latency(capsys, case):
    engine_dir, path, texts = case
    code, out, err = run_cli(capsys, "eval", engine_dir, "--data", path, "--max-new-tokens", MAX_NEW_TOKENS, "--json")
    assert code == 0, err
    assert out.count("\n") == 1
    s = json.loads(out)
    assert (s["n"], s["correct"], s["accuracy"]) == (4, 3, 0.75)
    assert s["by_type"] == {"all": {"accuracy": 1.0, "n": 1}, "mc": {"accuracy": 0.0, "n": 1},
                            "open": {"accuracy": 1.0, "n": 2}}
    assert s["wrong"] == [{"line": 3, "type": "mc", "question": "What is launching?", "expected": "B", "got": texts[2]}]
    assert (s["method"], s["engine_dir"], s["data"], s["batch"]) == ("none", str(engine_dir), str(path), 1)
    assert s["mean_visual_tokens"] == 576
    assert s["prefill_ms"]["mean"] > 0 and s["prefill_ms"]["median"] > 0 and s["decode_ms_per_token"]["mean"] > 0
    assert "[eval] 4/4 (100%): accuracy 0.750" in err


def test_out_records_each_request_and_flops_follow_the_flops_command(case, tmp_path):
    engine_dir, path, texts = case
    out = tmp_path / "records.jsonl"
    summary, records = evaluate(EvalConfig(engine_dir, path, max_new_tokens=MAX_NEW_TOKENS, out=out))
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert [r["prediction"] for r in records] == texts and [r["correct"] for r in records] == [True, True, False, True]
    assert [r["line"] for r in records] == [1, 2, 3, 4] and [r["answer"] for r in records][2] == "B"
    assert {r["visual_tokens"] for r in records} == {576} and {r["new_tokens"] for r in records} == {MAX_NEW_TOKENS}
    want = [flops_report(str(engine_dir), "none", r["text_tokens"])["total_tflops"] for r in records]
    assert [r["tflops"] for r in records] == want and summary["tflops"] == pytest.approx(mean(want))
    assert records[2]["text_tokens"] > records[0]["text_tokens"] + 10  # the multiple-choice prompt's options
    assert all(r["decode_ms_per_token"] == round(r["decode_ms"] / (MAX_NEW_TOKENS - 1), 3) for r in records)
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]  # the staged temp file is gone


def test_limit_evaluates_exactly_the_first_n(case):
    engine_dir, path, texts = case
    summary, records = evaluate(EvalConfig(engine_dir, path, limit=2, max_new_tokens=MAX_NEW_TOKENS))
    assert summary["n"] == 2 and [r["line"] for r in records] == [1, 2] and summary["accuracy"] == 1.0
    assert list(summary["by_type"]) == ["open"]


def test_batches_give_the_same_answers_and_share_their_time(case):
    engine_dir, path, texts = case
    summary, records = evaluate(EvalConfig(engine_dir, path, max_new_tokens=MAX_NEW_TOKENS, batch=3))
    assert [r["prediction"] for r in records] == texts and summary["accuracy"] == 0.75
    assert records[0]["prefill_ms"] == records[1]["prefill_ms"] == records[2]["prefill_ms"] != records[3]["prefill_ms"]


def test_the_readable_summary_shows_accuracy_types_costs_and_wrong_answers(capsys, case):
    engine_dir, path, texts = case
    code, out, _ = run_cli(capsys, "eval", engine_dir, "--data", path, "--max-new-tokens", MAX_NEW_TOKENS)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"none ({engine_dir}) on {path}: accuracy 0.7500 (3 of 4)"
    assert lines[3].split() == ["all", "1", "1.0000"] and lines[4].split() == ["mc", "1", "0.0000"]
    assert "visual tokens into the LLM's last layers (mean)  576.0" in out
    assert "wrong answers (1 of 1 shown" in out and "line 3 [mc] 'What is launching?': expected 'B', got " in out


def test_a_bad_line_stops_the_run_before_any_engine_opens(case, monkeypatch, capsys):
    engine_dir, path, _ = case
    bad = path.parent / "bad.jsonl"  # beside the photos, which the other lines name relatively
    lines = path.read_text().splitlines()
    bad.write_text("\n".join(lines[:3] + [lines[3].replace("photos/astronaut.jpg", str(path.parent / "gone.jpg"))]))
    monkeypatch.setattr("evaluation.evaluate.open_engine_dir", lambda *a: pytest.fail("an engine was opened"))
    with pytest.raises(InputError) as e:
        evaluate(EvalConfig(engine_dir, bad))
    assert str(e.value).startswith(f"1 bad line(s) in the question file: {bad}:4: image '{path.parent / 'gone.jpg'}' "
                                   "does not exist")
    code, out, err = run_cli(capsys, "eval", engine_dir, "--data", bad)
    assert (code, out, err.count("\n")) == (2, "", 1) and err.startswith("error: 1 bad line(s)")


@pytest.mark.parametrize("args, says", [
    (["--data", "{tmp}/none.jsonl"], "error: question file {tmp}/none.jsonl does not exist"),
    (["--data", "{data}", "--limit", "0"], "error: --limit must be an integer of at least 1, got 0"),
    (["--data", "{data}", "--out", "{tmp}/no/such/dir/r.jsonl"], "error: --out {tmp}/no/such/dir/r.jsonl must be a file"),
])
def test_bad_arguments_get_one_error_line_and_exit_2(capsys, case, tmp_path, args, says):
    engine_dir, path, _ = case
    fill = lambda s: s.format(tmp=tmp_path, data=path)  # noqa: E731
    code, out, err = run_cli(capsys, "eval", engine_dir, *map(fill, args))
    assert (code, out, err.count("\n")) == (2, "", 1) and err.startswith(fill(says)), err


def test_an_engine_dir_that_does_not_exist_gets_one_error_line(capsys, tmp_path):
    (tmp_path / "q.jsonl").write_text("{}\n")
    code, out, err = run_cli(capsys, "eval", tmp_path / "nowhere", "--data", tmp_path / "q.jsonl")
    assert (code, out) == (2, "") and err == f"error: engine dir {tmp_path / 'nowhere'} does not exist, so there is no " \
        f"manifest.json to read; create one with `python cli.py export ... --out {tmp_path / 'nowhere'}`\n"


def test_flops_count_the_tokens_a_data_dependent_stage_actually_kept(case):
    """ATP keeps a count per input (keep None in the manifest): each request's FLOPs use its own count."""
    engine_dir, _, _ = case
    counter = RequestFlops(read_manifest(engine_dir))
    counter.schedule = replace(counter.schedule, stages=[Stage("llm.l3", "llm", 3, None, mean_keep=200.0)])
    result = Result("", [1], [1] * 21, [{"name": "llm.l3", "kept": list(range(100))}], {})
    fixed = Schedule([Stage("llm.l3", "llm", 3, 100)], 576)
    want = count_flops(counter.dims, tokens_per_layer(fixed, counter.dims), 20, False, counter.text_encoder)
    assert counter.tflops(result) == want["total_tflops"]
    assert tokens_per_layer(fixed, counter.dims)["llm"][3:5] == [576, 100]


def test_compare_torch_counts_the_questions_the_reference_answers_with_other_tokens(capsys, case):
    engine_dir, path, texts = case
    code, out, err = run_cli(capsys, "eval", engine_dir, "--data", path, "--max-new-tokens", MAX_NEW_TOKENS, "--limit",
                             2, "--compare-torch", "--json")
    assert code == 0, err
    assert json.loads(out)["reference"] == {"n": 2, "same_tokens": 2, "differ_lines": []}

    class Contrary:  # a reference that answers line 2 otherwise
        def generate(self, requests, max_new_tokens):
            results = open_engine_dir(engine_dir).generate(requests, max_new_tokens)
            if "cup" in requests[0].prompt:
                results[0] = replace(results[0], token_ids=results[0].token_ids[:-1] + [7], text="something else")
            return results
    summary, records = evaluate(EvalConfig(engine_dir, path, max_new_tokens=MAX_NEW_TOKENS), reference=lambda m: Contrary())
    assert summary["reference"] == {"n": 4, "same_tokens": 3, "differ_lines": [2]}
    assert [r["same_as_reference"] for r in records] == [True, False, True, True]
    assert records[1]["reference_answer"] == "something else"
