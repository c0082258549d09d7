"""In-flight batching on the tiny model: requests that join a running batch mid-flight get exactly what they get
alone (every method, ATP's per-request counts included; greedy and seeded sampling), freed rows are reused within
max_batch rows, tokens stream in order, a bad request fails alone, and GPU-resident caches are refused."""
import pytest

from engines.onnxruntime_runner import OnnxrtRunner
from engines.tensorrt.runner import TensorrtRunner
from export.methods.registry import all_methods
from runtime.errors import EngineDirError, InputError
from runtime.generator import Generator
from runtime.inflight import InflightBatcher
from runtime.load import open_engine_dir
from runtime.request import Request
from runtime.sampling import SamplingParams
from tests.conftest import IMAGES, PROMPTS

# different images, prompts (so prompt and KV lengths) and token limits; 2 and 3 join while 1 decodes
REQUESTS = [Request(IMAGES / "chelsea.jpg", PROMPTS[1], SamplingParams(max_new_tokens=9)),
            Request(IMAGES / "coffee.jpg", PROMPTS[0], SamplingParams(max_new_tokens=3)),
            Request(IMAGES / "astronaut.jpg", PROMPTS[2], SamplingParams(max_new_tokens=6))]
ARRIVALS = [0, 2, 3]
SAME = ["token_ids", "text", "input_ids", "stages", "visual_tokens", "relevant_tokens", "kv_cache_bytes",
        "finish_reason"]


def alone(generator, requests):
    return [generator.generate([r])[0] for r in requests]


def assert_same(got, want):
    for field in SAME:
        assert [getattr(r, field) for r in got] == [getattr(r, field) for r in want], field


@pytest.fixture(scope="module")
def ivtp(ivtp_dir):
    return open_engine_dir(ivtp_dir, "cpu")


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_requests_joining_mid_flight_get_what_they_get_alone(exported, method):
    generator = open_engine_dir(exported(method), "cpu")
    want = alone(generator, REQUESTS)
    batcher = InflightBatcher(generator, max_batch=4)
    handles = batcher.run(REQUESTS, ARRIVALS)
    assert_same([h.result() for h in handles], want)
    first = handles[0]
    assert all(h.joined_step == a for h, a in zip(handles, ARRIVALS))
    assert all(first.joined_step < h.joined_step < first.finished_step for h in handles[1:])  # it was decoding
    assert batcher.peak_rows == 3 and not batcher.rows
    # request 2 left before 3: 3 moved down into its row
    assert handles[1].finished_step < handles[2].finished_step and handles[2].rows == [2, 1]
    if method == "atp":  # its kept counts differ per request: the rows hold visual blocks of different lengths
        assert len({r.visual_tokens["count"] for r in want}) > 1


def test_a_seeded_request_samples_the_same_tokens_in_flight_as_alone(ivtp):
    seeded = Request(IMAGES / "rocket.jpg", PROMPTS[0], SamplingParams(temperature=1.0, top_k=50, seed=1234,
                                                                        max_new_tokens=8))
    other = Request(IMAGES / "coffee.jpg", PROMPTS[1], SamplingParams(temperature=0.8, seed=7, max_new_tokens=5))
    requests = [REQUESTS[0], seeded, other]
    handles = InflightBatcher(ivtp).run(requests, [0, 1, 1])
    got = [h.result() for h in handles]
    assert_same(got, alone(ivtp, requests))
    assert got[1].token_ids != alone(ivtp, [Request(seeded.image, seeded.prompt, SamplingParams(max_new_tokens=8))])[0]\
        .token_ids  # it sampled


def test_a_freed_row_is_taken_by_the_next_request_and_rows_never_exceed_max_batch(ivtp):
    requests = [REQUESTS[1], REQUESTS[0], REQUESTS[2], Request(IMAGES / "camera.jpg", PROMPTS[1],
                                                                SamplingParams(max_new_tokens=2))]
    batcher = InflightBatcher(ivtp, max_batch=2)
    occupancy = []
    handles = []
    for r in requests:
        handles.append(batcher.submit(r))
    while batcher.busy:
        batcher.step()
        occupancy.append(len(batcher.rows))
        assert all(len(p.valid) == 2 and all(b.shape[0] == 2 for b in p.buffers.values()) for p in batcher.pools)
    assert max(occupancy) == batcher.peak_rows == 2
    assert_same([h.result() for h in handles], alone(ivtp, requests))
    # Tokens: 1 from the prefill at joining, then 1 per step. The first (3 tokens) leaves row 0 at step 1 and the
    # second moves down into it; the third, waiting, takes the row freed (1) at step 2 and leaves it at step 6
    # (6 tokens), where the fourth joins at step 7, as the second leaves (9 tokens).
    assert [h.joined_step for h in handles] == [0, 0, 2, 7] and [h.finished_step for h in handles] == [1, 7, 6, 7]
    assert [h.rows for h in handles] == [[0], [1, 0], [1], [1]]
    assert occupancy == [2, 1, 2, 2, 2, 2, 1, 0]


def test_tokens_stream_one_by_one_in_order_with_the_text_so_far(ivtp):
    streamed = {}
    decode = ivtp.prompts.decode
    handles = InflightBatcher(ivtp).run(REQUESTS, ARRIVALS, on_token=lambda i, token, text: streamed.setdefault(
        i, []).append((token, text)))
    for h in handles:
        tokens = [t for t, _ in streamed[h.id]]
        assert tokens == h.result().token_ids
        assert [text for _, text in streamed[h.id]] == [decode(tokens[:n]) for n in range(1, len(tokens) + 1)]
        assert streamed[h.id][-1][1] == h.result().text


def test_a_bad_request_fails_alone_and_the_running_ones_go_on(ivtp):
    too_long = Request(IMAGES / "chelsea.jpg", "many words " * 2000)
    missing = Request(IMAGES / "no-such-image.jpg", PROMPTS[0])
    requests = [REQUESTS[0], missing, too_long, REQUESTS[2]]
    batcher = InflightBatcher(ivtp)
    handles = batcher.run(requests, [0, 1, 2, 2])
    good = [handles[0].result(), handles[3].result()]
    assert_same(good, alone(ivtp, [REQUESTS[0], REQUESTS[2]]))
    with pytest.raises(InputError, match="does not exist"):
        handles[1].result()
    with pytest.raises(InputError, match="Shorten the prompt"):
        handles[2].result()
    assert [h.finished_step for h in handles[1:3]] == [1, 2] and handles[1].rows == handles[2].rows == []
    assert handles[0].finished_step > 2  # it ran on through both failures


def test_a_fixed_capacity_too_small_refuses_that_request_only(ivtp):
    batcher = InflightBatcher(ivtp, capacity=ivtp.facts["max_positions"])
    assert_same([h.result() for h in batcher.run(REQUESTS[:2])], alone(ivtp, REQUESTS[:2]))
    small = InflightBatcher(ivtp, capacity=8)
    with pytest.raises(InputError, match="capacity=8"):
        small.run([REQUESTS[1]])[0].result()


def test_kv_caches_kept_on_a_gpu_are_refused_with_the_reason(ivtp):
    decoder = ivtp.pipe.segments[0].decoder
    for runner, reason in [(TensorrtRunner(lambda: None, decoder), "TensorRT"),
                           (OnnxrtRunner(lambda: None, decoder, kv_device="cuda"), "'cuda'")]:
        with pytest.raises(EngineDirError, match=reason):
            InflightBatcher(Generator(ivtp.m, {**ivtp.engines, decoder: runner}))
