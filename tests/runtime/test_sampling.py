"""Sampling: the Sampler on hand-made logits (greedy, top-k, top-p, seeds, frequencies), the checks of its params, and
generation on the tiny model (greedy unchanged, seeded runs reproducible alone and in a batch, stop strings,
per-request token limits)."""
import json
import math

import numpy as np
import pytest

from runtime.errors import InputError
from runtime.request import Request
from runtime.requests_file import read_requests
from runtime.sampler import Sampler, candidates
from runtime.sampling import SamplingParams
from runtime.stopping import first_stop
from tests.conftest import IMAGES, PROMPTS

# Probabilities by id; likeliest first: 1 (0.45), 3 (0.25), 4 (0.15), 0 (0.10), 2 (0.05). Cumulative: 0.45, 0.70,
# 0.85, 0.95, 1. The top_p values below stay clear of those sums, where float rounding would decide.
PROBS = np.array([0.10, 0.45, 0.05, 0.25, 0.15])
LOGITS = np.log(PROBS)[None]  # one row


def draws(params: SamplingParams, logits=LOGITS, n=20000) -> np.ndarray:
    sampler = Sampler([params] * len(logits))
    return np.stack([sampler.pick(logits) for _ in range(n)])  # [n, B]


def frequencies(picks: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(picks, minlength=vocab) / len(picks)


# ---------------------------------------------------------------- the Sampler on hand-made logits
def test_temperature_0_is_argmax_of_every_row():
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32)
    logits[3, [7, 30]] = logits[3].max() + 1  # a tie: argmax takes the lower id
    assert Sampler([SamplingParams()] * 4).pick(logits).tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("temperature", [0.05, 1.0, 7.0, 1e4])
def test_top_k_1_and_a_tiny_top_p_are_argmax_at_any_temperature(temperature):
    logits = np.random.default_rng(1).normal(size=(4, 50))
    logits[3, [7, 30]] = logits[3].max() + 1e-3  # a tie: the lower id, as argmax
    want = logits.argmax(-1).tolist()
    for params in [SamplingParams(temperature, top_k=1, seed=2), SamplingParams(temperature, top_p=1e-9, seed=2)]:
        assert all(draws(params, logits, n=50).T.tolist()[b] == [want[b]] * 50 for b in range(4))


def test_one_seed_gives_one_sequence_and_another_seed_another():
    params = SamplingParams(temperature=1.0, seed=7)
    first, again = draws(params, n=200)[:, 0], draws(params, n=200)[:, 0]
    other = draws(SamplingParams(temperature=1.0, seed=8), n=200)[:, 0]
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()


def test_top_k_samples_only_the_k_likeliest_at_their_renormalised_probabilities():
    # 20000 draws: a frequency's standard error is at most sqrt(0.25 / 20000) = 0.0035; 0.015 is over 4 of them
    freq = frequencies(draws(SamplingParams(temperature=1.0, top_k=3, seed=11))[:, 0], 5)
    assert set(np.flatnonzero(freq)) == {1, 3, 4}
    np.testing.assert_allclose(freq[[1, 3, 4]], PROBS[[1, 3, 4]] / 0.85, atol=0.015)


def test_temperature_flattens_the_distribution_as_p_to_the_power_1_over_t():
    freq = frequencies(draws(SamplingParams(temperature=2.0, seed=12))[:, 0], 5)
    want = np.sqrt(PROBS) / np.sqrt(PROBS).sum()  # softmax(log p / 2)
    np.testing.assert_allclose(freq, want, atol=0.015)


@pytest.mark.parametrize("top_p, nucleus", [(0.3, [1]), (0.5, [1, 3]), (0.8, [1, 3, 4]), (0.9, [1, 3, 4, 0]),
                                            (0.97, [1, 3, 4, 0, 2]), (1.0, [1, 3, 4, 0, 2])])
def test_top_p_keeps_the_smallest_likeliest_set_reaching_p(top_p, nucleus):
    ids, probs = candidates(LOGITS[0], SamplingParams(temperature=1.0, top_p=top_p))
    assert ids.tolist() == nucleus
    np.testing.assert_allclose(probs, PROBS[nucleus] / PROBS[nucleus].sum(), rtol=1e-12)
    picked = set(draws(SamplingParams(temperature=1.0, top_p=top_p, seed=5), n=3000)[:, 0].tolist())
    assert picked == set(nucleus)  # the least likely of them, at >= 0.05 / 0.85, shows up in 3000 draws


def test_top_p_applies_to_what_top_k_left():
    # top-k 2 leaves ids 1 and 3 at 0.45 / 0.7 = 0.643 and 0.357: top_p 0.6 keeps id 1 alone (over the whole
    # distribution it would keep 1 and 3)
    assert candidates(LOGITS[0], SamplingParams(temperature=1.0, top_k=2, top_p=0.6))[0].tolist() == [1]
    assert candidates(LOGITS[0], SamplingParams(temperature=1.0, top_p=0.6))[0].tolist() == [1, 3]


def test_top_k_ties_at_the_cut_keep_the_lower_ids():
    ids, _ = candidates(np.array([0.0, 2.0, 1.0, 2.0, 1.0, 1.0]), SamplingParams(temperature=1.0, top_k=3))
    assert ids.tolist() == [1, 3, 2]


def test_each_row_has_its_own_rng_and_a_skipped_row_draws_nothing():
    params = [SamplingParams(temperature=1.0, seed=3), SamplingParams(temperature=1.0, seed=4)]
    alone = draws(params[1], n=30)[:, 0]
    batch = Sampler(params)
    logits = np.repeat(LOGITS, 2, 0)
    skipped = batch.pick(logits, rows=[0], fill=-7)  # row 1 finished early: it keeps its draws for later
    assert skipped[1] == -7
    assert [int(batch.pick(logits)[1]) for _ in range(30)] == alone.tolist()


def test_the_earliest_stop_string_wins():
    assert first_stop("a cat. A dog!", ("!", ".")) == 5 and first_stop("no stop", ("!",)) is None


# ---------------------------------------------------------------- checks of the params
@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.5}, "temperature must be a finite number >= 0 (0 is greedy), got -0.5"),
    ({"temperature": math.inf}, "temperature must be a finite number >= 0 (0 is greedy), got inf"),
    ({"temperature": math.nan}, "temperature must be a finite number >= 0 (0 is greedy), got nan"),
    ({"temperature": "hot"}, "temperature must be a finite number >= 0 (0 is greedy), got 'hot'"),
    ({"top_p": 0}, "top_p must be a number in (0, 1] (1 keeps every token), got 0"),
    ({"top_p": 1.5}, "top_p must be a number in (0, 1] (1 keeps every token), got 1.5"),
    ({"top_k": -1}, "top_k must be an integer >= 0 (0 keeps every token), got -1"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0 (0 keeps every token), got 2.5"),
    ({"top_k": True}, "top_k must be an integer >= 0 (0 keeps every token), got True"),
    ({"seed": -3}, "seed must be an integer >= 0 (or left out for a random one), got -3"),
    ({"seed": "7"}, "seed must be an integer >= 0 (or left out for a random one), got '7'"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
    ({"stop": [""]}, "stop must be a list of non-empty strings, got ['']"),
    ({"stop": ["ok", 3]}, "stop must be a list of non-empty strings, got ['ok', 3]"),
    ({"stop": ["x"] * 17}, "stop takes at most 16 strings, got 17"),
])
def test_bad_params_name_the_value_and_the_allowed_range(kwargs, message):
    with pytest.raises(InputError) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == message


def test_good_params_are_kept_and_one_stop_string_is_a_list_of_one():
    assert SamplingParams(0.7, 0.9, 40, 0, "###", 5) == SamplingParams(0.7, 0.9, 40, 0, ("###",), 5)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b") and SamplingParams().greedy


def test_request_lines_set_their_own_sampling_over_the_defaults_and_bad_ones_name_file_and_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    lines = [{"image": "a.jpg", "prompt": "hi"},
             {"image": "b.jpg", "prompt": "hi", "temperature": 0.5, "seed": 9, "stop": "\n", "max_new_tokens": 4}]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    defaults = SamplingParams(temperature=1.0, top_k=20)
    first, second = read_requests(path, defaults)
    assert first.sampling == defaults
    assert second.sampling == SamplingParams(0.5, 1.0, 20, 9, ("\n",), 4)
    assert [r.sampling for r in read_requests(path)][0] is None  # no defaults, no keys: greedy as before

    path.write_text(json.dumps(lines[0]) + "\n" + json.dumps({**lines[0], "top_p": 2}))
    with pytest.raises(InputError) as e:
        read_requests(path)
    assert str(e.value) == f"{path}:2: top_p must be a number in (0, 1] (1 keeps every token), got 2"


# ---------------------------------------------------------------- generation on the tiny model
REQUESTS = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
SAMPLED = SamplingParams(temperature=1.0, top_k=50, seed=1234, max_new_tokens=8)


def with_sampling(request: Request, sampling: SamplingParams) -> Request:
    return Request(request.image, request.prompt, sampling)


@pytest.fixture(scope="module")
def greedy(ivtp_engines):
    return ivtp_engines.generate(REQUESTS, max_new_tokens=8)


def test_temperature_0_gives_the_greedy_tokens(ivtp_engines, greedy):
    got = ivtp_engines.generate([with_sampling(r, SamplingParams(temperature=0)) for r in REQUESTS], max_new_tokens=8)
    assert [g.token_ids for g in got] == [w.token_ids for w in greedy]
    assert [g.text for g in got] == [w.text for w in greedy]
    eos = ivtp_engines.eos
    assert [g.finish_reason for g in got] == ["stop" if w.token_ids[-1] == eos else "length" for w in greedy]
    assert all(len(w.token_ids) == 8 or w.token_ids[-1] == eos for w in greedy)


def test_a_seeded_request_gives_the_same_tokens_twice_and_alone_or_in_a_batch(ivtp_engines, greedy):
    seeded = with_sampling(REQUESTS[0], SAMPLED)
    once, twice = (ivtp_engines.generate([seeded])[0] for _ in range(2))
    other = with_sampling(REQUESTS[1], SamplingParams(temperature=0.8, seed=99, max_new_tokens=5))
    batched = ivtp_engines.generate([other, seeded])[1]
    assert once.token_ids == twice.token_ids == batched.token_ids and once.text == batched.text
    assert len(once.token_ids) == 8 or once.token_ids[-1] == ivtp_engines.eos
    assert once.token_ids != greedy[0].token_ids  # it sampled
    reseeded = ivtp_engines.generate([with_sampling(REQUESTS[0], SamplingParams(1.0, 1.0, 50, 1235, (), 8))])[0]
    assert reseeded.token_ids != once.token_ids


def test_a_stop_string_cuts_the_text_before_it_and_ends_generation(ivtp_engines, greedy):
    decode = ivtp_engines.prompts.decode
    want = greedy[0]
    # a stop string the greedy text completes at its third token or later, so the cut shortens the tokens too
    at = next(n for n in range(3, len(want.token_ids)) if decode(want.token_ids[:n]) != decode(want.token_ids[:n - 1]))
    full = decode(want.token_ids[:at])
    stop = full[len(decode(want.token_ids[:at - 1])):].strip() or full[-1]
    got = ivtp_engines.generate([with_sampling(REQUESTS[0], SamplingParams(stop=("never here", stop)))], 8)[0]
    n = len(got.token_ids)
    assert got.finish_reason == "stop" and got.token_ids == want.token_ids[:n]
    assert stop in decode(got.token_ids) and stop not in decode(got.token_ids[:n - 1])
    assert got.text == want.text[:want.text.index(stop)] and stop not in got.text


def test_each_request_in_a_batch_keeps_its_own_token_limit(ivtp_engines, greedy):
    eos = ivtp_engines.eos
    assert all(eos not in w.token_ids for w in greedy)  # the tiny model runs on past 8 tokens: the limits decide
    requests = [REQUESTS[0], with_sampling(REQUESTS[1], SamplingParams(max_new_tokens=7)),
                with_sampling(REQUESTS[0], SamplingParams(max_new_tokens=3))]
    got = ivtp_engines.generate(requests, max_new_tokens=2)  # the limit of the request that sets none
    assert [r.token_ids for r in got] == [greedy[0].token_ids[:2], greedy[1].token_ids[:7], greedy[0].token_ids[:3]]
    assert [r.to_json()["finish_reason"] for r in got] == ["length"] * 3
