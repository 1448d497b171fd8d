"""Gold rewards: VADER compound of the response (and of prompt + response)."""

import numpy as np
import pytest

from rlhf_jax.rewards import GOLD_REWARDS, get_gold, vader_compound


def test_vader_matches_hand_computed_compound():
    # VADER: compound = s / sqrt(s^2 + 15) with s the sum of valences.
    # "great" = 3.1 -> 3.1/sqrt(24.61) = 0.6249; "awful" -2.0 + "boring" -1.3 = -3.3
    # -> -3.3/sqrt(25.89) = -0.6486.
    g = get_gold("vader")(["", "", ""], ["the movie was great", "awful and boring", ""])
    assert g.dtype == np.float32 and g.shape == (3,)
    np.testing.assert_allclose(g, [0.6249, -0.6486, 0.0], atol=1e-4)
    assert g[0] > 0.5 and g[1] < -0.5


def test_vader_ignores_prompt_and_vader_full_uses_it():
    prompts = ["the movie was", "the movie was great"]
    responses = ["great", "   "]
    np.testing.assert_allclose(get_gold("vader")(prompts, responses), [0.6249, 0.0], atol=1e-4)
    full = get_gold("vader_full")(prompts, responses)
    # "the movie was great" scored as one text; an empty response scores 0 even after a good prompt
    np.testing.assert_allclose(full, [0.6249, 0.0], atol=1e-4)
    # VADER's "but" rule: valences before "but" x0.5, after x1.5:
    # -1.0 - 0.65 + 4.65 = 3.0 -> 3/sqrt(24) = 0.6124; the response alone: 4.65 -> 0.7684.
    full2 = get_gold("vader_full")(["awful and boring"], ["but great"])
    np.testing.assert_allclose(full2, [0.6124], atol=1e-4)
    np.testing.assert_allclose(get_gold("vader")(["awful and boring"], ["but great"]), [0.7684],
                               atol=1e-4)


def test_negation_and_mixed_sentences_have_the_expected_sign():
    g = get_gold("vader")([""] * 3, ["the food was not good .",
                                     "the food was bad but the service was wonderful !",
                                     "the room was small ."])
    assert g[0] < 0 and g[1] > 0 and g[2] == 0.0
    assert vader_compound("the room was small .") == 0.0


def test_input_validation_and_registry():
    with pytest.raises(ValueError):
        get_gold("vader")(["a"], ["b", "c"])
    with pytest.raises(TypeError):
        get_gold("vader")("a", "b")
    assert {"vader", "vader_full"} <= set(GOLD_REWARDS)
    with pytest.raises(KeyError, match="did you mean 'vader'"):
        get_gold("vadr")
