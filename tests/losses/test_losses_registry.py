import pytest

from rlhf_jax.losses import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSSES, Registry


def test_register_get_names_contains():
    reg = Registry("widget")

    @reg.register("adaptive")
    def a():
        return 1

    reg.register("fixed")(lambda: 2)
    assert reg.get("adaptive") is a
    assert reg.names() == ["adaptive", "fixed"]
    assert "fixed" in reg and "nope" not in reg
    assert len(reg) == 2


def test_did_you_mean_message():
    reg = Registry("widget")
    reg.register("adaptive")(object())
    reg.register("fixed")(object())
    with pytest.raises(KeyError) as e:
        reg.get("adaptiv")
    msg = e.value.args[0]
    assert msg == "unknown widget 'adaptiv'; did you mean 'adaptive'? (known: adaptive, fixed)"


def test_no_suggestion_when_nothing_close():
    reg = Registry("widget")
    reg.register("adaptive")(object())
    with pytest.raises(KeyError, match=r"unknown widget 'zzz' \(known: adaptive\)"):
        reg.get("zzz")


def test_duplicate_registration_rejected_unless_override():
    reg = Registry("widget")
    reg.register("x")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(2)
    reg.register("x", override=True)(2)
    assert reg.get("x") == 2


def test_module_registries_populated():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert {"gae", "rloo", "grpo", "dr_grpo", "reinforce"} <= set(ADVANTAGE_ESTIMATORS.names())
    assert {"ppo_policy", "ppo_value", "a2c_policy", "bradley_terry", "sft_next_token"} <= set(
        LOSSES.names())
    with pytest.raises(KeyError, match="did you mean 'gae'"):
        ADVANTAGE_ESTIMATORS.get("gea")
