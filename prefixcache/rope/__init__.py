"""Which rotary position embeddings let a cached prefix be reused exactly, and where.

A cached prefix's keys were rotated when the prefix was first computed; reusing
them is exact only if an uncached run would have rotated them the same way. In
transformers 5.23 (``modeling_rope_utils``) a token's rotation depends on its
position alone for every rotary type but two, which also depend on ``s``, the
length of the forward pass that computes it: the largest position id in the
batch, plus one (with left padding and ids counted from each row's first real
token, the longest row's length; in a decode step, the new token's position + 1).

``default``, ``linear``, ``llama3``, ``yarn``, ``proportional``, ``axial``
    Position only: the inverse frequencies and the attention factor are computed
    once from the config (their init functions ignore ``seq_len``). ``mrope``
    (an old label, read as ``default``) and HunYuan's ``ntk_alpha`` (a
    ``"dynamic"`` config with an ``alpha``, which its rotary class renames in
    transformers 5; before, it rescaled like ``dynamic`` past the threshold, so
    the type the rotary module reports decides) too. Rule: one regime, reuse
    everywhere.

``dynamic`` (dynamic NTK), with ``M = max_position_embeddings``
    Length *and state*: the rotary module keeps ``max_seq_len_cached`` (``M`` at
    first). A forward with ``s`` above it recomputes the frequencies for ``s``
    and raises it to ``s``; one with ``s < M`` resets both to the original ones;
    one with ``M <= s <= max_seq_len_cached`` keeps those of the longest earlier
    call, so past ``M`` even the uncached model's outputs depend on what ran
    before (the same long prompt generated twice gives other logits). Decoding
    grows it by one per step, the new token rotated for ``p + 1`` and the prompt
    kept as it was. Rule: reuse only while ``s <= M - 1``, where every forward
    uses the original frequencies; store nothing at a position ``>= M - 1``; a
    request with ``s >= M`` runs without reuse (its generated tokens may cross
    ``M``: the prompt's KV is then the same in both runs, so outputs agree).

``longrope`` (Phi-3/3.5 128k, Phi-4-mini, PhiMoE), with ``O`` the original length
    Length, no state: short factors when ``s <= O``, long ones when ``s > O``.
    ``O`` is ``config.original_max_position_embeddings`` when the config has that
    attribute; else ``rope_parameters["original_max_position_embeddings"]`` in
    transformers 5 and ``max_position_embeddings`` before, so both are bounds
    then. Decoding across ``O`` rotates the new tokens with the long factors and
    keeps the prompt's short ones, except in Phi-3, PhiMoE and Phi-4-multimodal,
    whose ``prepare_inputs_for_generation`` drops the cache (when the sequence
    reaches ``O + 1`` tokens and the cache holds at most ``O``) and recomputes it
    all with the long factors. Rule: regimes ``s <= O`` and ``s > O``, each
    served only from entries computed in it; a generated token is stored only if
    the forward that computed it was in the request's regime.

Both length-dependent types write the frequencies of the current forward into a
buffer of the rotary module, then read it: two forwards running at once in two
threads may rotate with each other's, so their forwards must run one at a time.

Per-layer rope parameters (a dict per layer type) combine their rules: the
bounds of all, reuse only where all allow it. Any other type is unknown and
must be refused: reuse could change outputs in ways not analysed here.

>>> from types import SimpleNamespace
>>> rule = classify(SimpleNamespace(max_position_embeddings=64,
...                                 rope_parameters={"rope_type": "dynamic", "factor": 2.0}))
>>> rule.kind.value, rule.regime(63).reuse, rule.regime(64).reuse
('length-dependent', True, False)
"""

from .classify import classify, probe_pairs, probe_thresholds, rope_parameters_of, unclassified
from .kinds import LENGTH_DEPENDENT_TYPES, POSITION_ONLY_TYPES, RopeKind
from .rule import Regime, RopeRule

__all__ = [
    "LENGTH_DEPENDENT_TYPES",
    "POSITION_ONLY_TYPES",
    "Regime",
    "RopeKind",
    "RopeRule",
    "classify",
    "probe_pairs",
    "probe_thresholds",
    "rope_parameters_of",
    "unclassified",
]
