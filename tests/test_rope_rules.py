"""The rotary rules: every rotary type transformers knows is classified, and the regimes add up."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from prefixcache.rope import (
    LENGTH_DEPENDENT_TYPES,
    POSITION_ONLY_TYPES,
    RopeKind,
    RopeRule,
    classify,
    probe_pairs,
    probe_thresholds,
    rope_parameters_of,
    unclassified,
)

from .tiny_models import config_for

# "type", and no other key: the form Phi-3's config accepted before transformers 5.
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.0, 2.0, 4.0, 8.0]}

# The parameters each type of ROPE_INIT_FUNCTIONS needs to build a config.
PARAMETERS: dict[str, dict[str, Any]] = {
    "default": {},  # a key of ROPE_INIT_FUNCTIONS before transformers 5
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 16},
    "longrope": {k: v for k, v in LONGROPE.items() if k != "rope_type"} | {"original_max_position_embeddings": 16},
    "llama3": {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "proportional": {"partial_rotary_factor": 0.5},
}


def test_every_rotary_type_of_the_installed_transformers_has_a_rule() -> None:
    assert unclassified(ROPE_INIT_FUNCTIONS) == []
    for rope_type in ROPE_INIT_FUNCTIONS:
        assert rope_type in PARAMETERS, f"no test parameters for {rope_type!r}"
        config = config_for(
            "llama", max_position_embeddings=64, rope_scaling={"rope_type": rope_type, **PARAMETERS[rope_type]}
        )
        rule = classify(config, known_types=ROPE_INIT_FUNCTIONS)
        assert rule.kind is not RopeKind.UNKNOWN, rule.why
        expected = RopeKind.LENGTH_DEPENDENT if rope_type in LENGTH_DEPENDENT_TYPES else RopeKind.POSITION_ONLY
        assert rule.kind is expected and rule.rope_types == (rope_type,)


@pytest.mark.parametrize("rope_type", sorted(POSITION_ONLY_TYPES))
def test_a_position_only_type_has_one_regime_that_needs_no_label(rope_type: str) -> None:
    rule = classify(SimpleNamespace(max_position_embeddings=64, rope_parameters={"rope_type": rope_type}))
    assert rule.kind is RopeKind.POSITION_ONLY
    assert rule.bounds == () and len(rule.regimes) == 1
    regime = rule.regime(10**6)
    assert regime.reuse and regime.label is None and regime.row_limit(100, 50) is None
    assert rule.may_reuse(3, 10**6)


def test_dynamic_reuses_only_below_max_position_embeddings() -> None:
    config = config_for("llama", max_position_embeddings=64, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    rule = classify(config)
    assert rule.kind is RopeKind.LENGTH_DEPENDENT
    assert rule.bounds == (63,) and rule.reuse == (True, False)
    assert rule.regime(63).reuse and not rule.regime(64).reuse
    assert rule.regime(1).row_limit(60, 50) == 53  # generated tokens stop being storable at position 63 - 10
    assert not rule.may_reuse(10, 64) and not rule.may_reuse(64, 70)
    assert "64" in rule.why


def test_longrope_has_two_regimes_at_the_config_attribute() -> None:
    config = config_for(
        "phi3", max_position_embeddings=128, original_max_position_embeddings=32, rope_scaling=dict(LONGROPE)
    )
    rule = classify(config)
    assert rule.kind is RopeKind.LENGTH_DEPENDENT
    assert rule.bounds == (32,) and rule.reuse == (True, True)
    assert [r.label for r in rule.regimes] == ["rope:1-32", "rope:33-"]
    assert rule.may_reuse(31, 32) and not rule.may_reuse(31, 33) and rule.may_reuse(33, 10**5)


def test_longrope_without_the_attribute_keeps_both_thresholds_releases_have_used() -> None:
    config = config_for(
        "llama", max_position_embeddings=128, rope_scaling=dict(LONGROPE, original_max_position_embeddings=32)
    )
    assert not hasattr(config, "original_max_position_embeddings")
    rule = classify(config)
    assert rule.bounds == (32, 128) and rule.reuse == (True, True, True)
    assert rule.may_reuse(40, 128) and not rule.may_reuse(40, 129)


def test_hunyuan_alpha_is_fixed_ntk_scaling_but_only_in_hunyuan() -> None:
    params = {"rope_type": "dynamic", "factor": 2.0, "alpha": 1000.0}
    hunyuan = classify(
        SimpleNamespace(model_type="hunyuan_v1_dense", max_position_embeddings=64, rope_parameters=params)
    )
    assert hunyuan.kind is RopeKind.POSITION_ONLY and hunyuan.rope_types == ("ntk_alpha",)
    llama = classify(SimpleNamespace(model_type="llama", max_position_embeddings=64, rope_parameters=params))
    assert llama.kind is RopeKind.LENGTH_DEPENDENT
    without = classify(
        SimpleNamespace(
            model_type="hunyuan_v1_moe", max_position_embeddings=64, rope_parameters={"rope_type": "dynamic"}
        )
    )
    assert without.kind is RopeKind.LENGTH_DEPENDENT
    # Before transformers 5 HunYuan's rotary module kept the type "dynamic" and rescaled past 64.
    older = SimpleNamespace(model_type="hunyuan_v1_dense", max_position_embeddings=64, rope_parameters=params)
    assert classify(older, module_types={"dynamic"}).kind is RopeKind.LENGTH_DEPENDENT
    assert classify(older, module_types={"ntk_alpha"}).kind is RopeKind.POSITION_ONLY


def test_an_unknown_type_is_unknown_and_says_so() -> None:
    rule = classify(SimpleNamespace(rope_parameters={"rope_type": "spiral"}))
    assert rule.kind is RopeKind.UNKNOWN and not rule.regime(5).reuse
    assert "'spiral'" in rule.why and "longrope" in rule.why
    installed = classify(SimpleNamespace(rope_parameters={"rope_type": "spiral"}), known_types={"spiral"})
    assert "installed transformers knows it" in installed.why
    # a type that only contains "dynamic" is not dynamic NTK as analysed
    assert classify(SimpleNamespace(rope_parameters={"type": "dynamic-yarn"})).kind is RopeKind.UNKNOWN


def test_dynamic_or_longrope_without_a_length_to_scale_from_is_unknown() -> None:
    assert classify(SimpleNamespace(rope_parameters={"rope_type": "dynamic"})).kind is RopeKind.UNKNOWN
    assert classify(SimpleNamespace(rope_parameters={"rope_type": "longrope"})).kind is RopeKind.UNKNOWN


def test_per_layer_parameters_combine_their_rules() -> None:
    config = SimpleNamespace(
        max_position_embeddings=64,
        rope_parameters={
            "full_attention": {"rope_type": "dynamic", "factor": 2.0},
            "sliding_attention": {"rope_type": "longrope", "original_max_position_embeddings": 16},
            "unused": None,
        },
    )
    rule = classify(config)
    assert rule.kind is RopeKind.LENGTH_DEPENDENT
    assert rule.rope_types == ("dynamic", "longrope")
    assert rule.bounds == (16, 63, 64) and rule.reuse == (True, True, False, False)
    fixed = SimpleNamespace(rope_parameters={"a": {"rope_type": "default"}, "b": {"rope_type": "linear", "factor": 2}})
    assert classify(fixed).kind is RopeKind.POSITION_ONLY and classify(fixed).bounds == ()
    odd = SimpleNamespace(rope_parameters={"a": {"rope_type": "default"}, "b": {"rope_type": "spiral"}})
    assert classify(odd).kind is RopeKind.UNKNOWN


def test_configs_without_rotary_parameters_and_old_style_ones() -> None:
    assert classify(config_for("gpt2")).kind is RopeKind.POSITION_ONLY
    assert rope_parameters_of(SimpleNamespace(rope_scaling={"type": "dynamic", "factor": 2.0})) == {
        "type": "dynamic",
        "factor": 2.0,
    }
    old = classify(SimpleNamespace(max_position_embeddings=64, rope_scaling={"type": "dynamic", "factor": 2.0}))
    assert old.kind is RopeKind.LENGTH_DEPENDENT and old.bounds == (63,)
    assert classify(SimpleNamespace(rope_scaling=None, rope_theta=1e4)).kind is RopeKind.POSITION_ONLY
    with pytest.raises(TypeError, match="rope_parameters"):
        classify(SimpleNamespace(rope_parameters=["dynamic"]))


def test_the_tiny_test_models_are_position_only() -> None:
    for model_type in ("llama", "phi3", "qwen2", "gpt_neox", "gemma"):
        assert classify(config_for(model_type)).kind is RopeKind.POSITION_ONLY, model_type


def test_a_rule_refuses_inconsistent_regimes_and_lengths() -> None:
    with pytest.raises(ValueError, match="reuse"):
        RopeRule(RopeKind.LENGTH_DEPENDENT, ("x",), bounds=(4,), reuse=(True,))
    with pytest.raises(ValueError, match="bounds"):
        RopeRule(RopeKind.LENGTH_DEPENDENT, ("x",), bounds=(8, 4), reuse=(True, True, True))
    rule = RopeRule(RopeKind.LENGTH_DEPENDENT, ("x",), bounds=(4,), reuse=(True, False))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="length"):
            rule.regime(bad)  # type: ignore[arg-type]


def test_thresholds_to_probe() -> None:
    # Phi-3's config always has original_max_position_embeddings; beyond max_position_embeddings it is not probed.
    assert probe_thresholds(config_for("phi3")) == ()
    assert probe_thresholds(config_for("phi3", original_max_position_embeddings=64)) == (64,)
    assert probe_thresholds(config_for("llama")) == ()
    dynamic = config_for("llama", max_position_embeddings=64, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert probe_thresholds(dynamic) == (64,)
    for threshold in (3, 10, 64, 4096):
        for prefix, whole in probe_pairs(threshold):
            assert 1 <= prefix < whole
        (low, below), (_, above), (high, _) = probe_pairs(threshold)
        assert below < threshold < above and low < threshold < high
    with pytest.raises(ValueError, match="threshold"):
        probe_pairs(2)


@given(
    bounds=st.lists(st.integers(1, 200), max_size=4, unique=True).map(sorted),
    data=st.data(),
)
def test_regimes_partition_the_lengths_and_row_limits_stay_inside(bounds: list[int], data: st.DataObject) -> None:
    reuse = tuple(data.draw(st.lists(st.booleans(), min_size=len(bounds) + 1, max_size=len(bounds) + 1)))
    rule = RopeRule(RopeKind.LENGTH_DEPENDENT, ("x",), bounds=tuple(bounds), reuse=reuse)
    labels = [r.label for r in rule.regimes]
    assert len(set(labels)) == len(labels)
    for length in range(1, 230):
        inside = [r for r in rule.regimes if r.contains(length)]
        assert inside == [rule.regime(length)]
    batch = data.draw(st.integers(1, 220))
    row = data.draw(st.integers(1, batch))
    regime = rule.regime(batch)
    limit = regime.row_limit(batch, row)
    if limit is not None:
        assert limit >= row  # the prompt itself was computed in the regime
        # the last storable token, at position limit - 1, was computed by a forward in the regime
        assert regime.contains(limit - 1 + 1 + (batch - row))
        assert not regime.contains(limit + 1 + (batch - row))
