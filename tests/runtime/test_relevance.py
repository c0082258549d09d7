"""IVTP Eq. 7 / 8 on hand-made spans where the right answer is known."""
import numpy as np

from runtime.relevance import map_to_llm, pseudo_cls, select_tokens

# "redcat sat": CLIP tokens [red][cat][sat] with spans; LLM tokens [redcat][ sat][s][at]
CLIP = [((0, 3), 0.5), ((3, 6), 0.1), ((7, 10), 0.3)]


def test_llm_token_spanning_several_clip_tokens_takes_their_mean():
    assert np.isclose(map_to_llm([(0, 6)], CLIP)[0], 0.3)


def test_llm_token_inside_one_clip_token_takes_its_value():
    got = map_to_llm([(7, 8), (8, 10)], CLIP)
    assert np.allclose(got, [0.3, 0.3])


def test_whitespace_and_template_tokens_get_no_relevance():
    got = map_to_llm([(6, 7), None], CLIP)
    assert np.isnan(got).all()


def test_threshold_selects_tokens_and_minus_one_takes_every_instruction_token():
    rel = np.array([0.25, np.nan, 0.1, 0.2])
    spans = [(0, 1), (1, 2), None, (3, 4)]
    assert select_tokens(rel, spans, 0.2).tolist() == [0, 3]
    assert select_tokens(rel, spans, -1.0).tolist() == [0, 1, 3]


def test_pseudo_cls_is_the_mean_or_the_visual_cls_when_nothing_passes():
    embeds = np.arange(12, dtype=np.float32).reshape(4, 3)
    fallback = np.full(3, -1.0, dtype=np.float32)
    assert np.allclose(pseudo_cls(embeds, np.array([0, 2]), fallback), [3, 4, 5])
    assert np.allclose(pseudo_cls(embeds, np.array([], dtype=np.int64), fallback), fallback)
