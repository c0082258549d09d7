"""Each run result says which visual tokens reached the LLM's last layers: how many, and their raster ids, or
None where they are merges that no raster id names. Stages are per pruning point and may be disjoint parts."""
import pytest

from runtime.load import open_engine_dir
from runtime.request import Request
from tests.conftest import IMAGES, PROMPTS

REQUEST = Request(IMAGES / "chelsea.jpg", PROMPTS[1])
MERGING = {"pool", "visionzip", "tome"}


def final_ids(method: str, result) -> list[int] | None:
    """What each method's stages say reached the LLM's last layers."""
    if method in MERGING:
        return None
    if method == "none":
        return list(range(576))
    if method == "vispruner":  # vit.important and vit.diverse are disjoint: the LLM gets their union
        return sorted(i for s in result.stages for i in s["kept"])
    return result.stages[-1]["kept"]


@pytest.mark.parametrize("method", ["none", "ivtp", "fastv", "atp", "topk", "random", "vispruner", "pool",
                                    "visionzip", "tome"])
def test_the_result_names_the_visual_tokens_that_reached_the_end(exported, method):
    engines = open_engine_dir(exported(method))
    result = engines.generate([REQUEST], max_new_tokens=1)[0]
    want = final_ids(method, result)
    assert result.visual_tokens["raster_ids"] == want
    in_llm = [s for s, spec in zip(result.stages, engines.m.stages) if spec.where == "llm"]
    count = len(in_llm[-1]["kept"]) if in_llm else engines.m.vision_tokens_out
    assert result.visual_tokens["count"] == count and (want is None or len(want) == count)
    assert result.to_json()["visual_tokens"] == result.visual_tokens


def test_vispruners_stages_are_disjoint_parts_of_what_the_llm_gets(exported):
    result = open_engine_dir(exported("vispruner")).generate([REQUEST], max_new_tokens=1)[0]
    important, diverse = (set(s["kept"]) for s in result.stages)
    assert (len(important), len(diverse)) == (48, 16) and not important & diverse
    assert set(result.visual_tokens["raster_ids"]) == important | diverse
