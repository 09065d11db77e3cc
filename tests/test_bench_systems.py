"""The benchmark's batches, systems (hf-cb included), overhead rows, plot and presets."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import prefixcache
from prefixcache.__main__ import main
from prefixcache.benchmark import report
from prefixcache.benchmark.continuous import HfContinuousBatching
from prefixcache.benchmark.ideal import Ideal
from prefixcache.benchmark.per_request import STEPS, measure
from prefixcache.benchmark.runner import run_workload
from prefixcache.benchmark.systems import HfManual, NoCache, PrefixCached, padded_requests
from prefixcache.benchmark.workloads import Request, Workload, batches, make_workload, prompt_lengths
from prefixcache.hf import PRESETS

from . import layer_kinds

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny() -> Any:
    return prefixcache.load_model(preset="tiny", seed=0)


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefixcache",
            "bench",
            "--preset",
            "tiny",
            "--quick",
            "--no-progress",
            "--workload",
            "all",
            "--systems",
            "no-cache,hf-manual,prefixcache,ideal,hf-cb",
            "--batch",
            "2",
            "--json",
            str(out / "bench.json"),
            "--plot",
            str(out / "bench.png"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    data = json.loads((out / "bench.json").read_text()) if done.returncode == 0 else {}
    return done, data, out


def test_batched_run_with_every_system_writes_consistent_json(quick_run: Any) -> None:
    done, data, _ = quick_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert data["config"]["batch"] == 2
    assert data["config"]["systems"] == ["no-cache", "prefixcache", "ideal", "hf-cb"]
    assert "hf-manual" in data["skipped"] and "hf-manual not run" in done.stdout
    vocab = PRESETS["tiny"]["vocab_size"]
    for name, workload in data["workloads"].items():
        assert f"workload {name}, sent in left-padded batches of up to 2" in done.stdout
        assert workload["batch_size"] == 2
        assert workload["outputs_identical"] is True
        assert set(workload["mismatched_requests"].values()) == {0}
        cb = name != "sampling"  # generate_batch returns one sequence per request
        assert set(workload["systems"]) == {"no-cache", "prefixcache", "ideal"} | ({"hf-cb"} if cb else set())
        expected = batches(make_workload(name, workload["requests"], seed=0, vocab=vocab, quick=True), 2)
        for system in workload["systems"].values():
            assert system["requests"] == workload["requests"] and system["batches"] == len(expected)
            assert len(system["ttft_ms"]) == len(system["total_ms"]) == workload["requests"]
            # A request waits for its batch: its latency is its batch's time, counted once in the total.
            per_request = [t for batch, ms in zip(expected, system["batch_ms"], strict=True) for t in [ms] * len(batch)]
            assert system["total_ms"] == per_request
            assert system["total_s"] == pytest.approx(sum(system["batch_ms"]) / 1e3)
            assert all(0 < ttft <= total for ttft, total in zip(system["ttft_ms"], system["total_ms"], strict=True))
        assert 0 <= workload["systems"]["prefixcache"]["hit_rate"] <= workload["best_hit_rate"] + 1e-12
        if cb:
            assert workload["systems"]["hf-cb"]["hit_rate"] is not None
            assert any(line.startswith("hf-cb: paged cache of") for line in workload["notes"])
    assert "hf-cb not run on sampling" in done.stdout
    fewshot = data["workloads"]["fewshot"]
    assert fewshot["systems"]["prefixcache"]["hit_rate"] > 0


def test_the_plot_is_one_png_with_or_without_a_sweep(quick_run: Any, tmp_path: Path) -> None:
    done, data, out = quick_run
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "bench.png").read_bytes()[:8] == PNG
    # A sweep: the same figures relabelled as two budgets of prefixcache.
    sweep = {}
    for name, workload in data["workloads"].items():
        systems = dict(workload["systems"])
        ours = systems.pop("prefixcache")
        systems["prefixcache[1GiB]"] = ours
        systems["prefixcache[1MiB]"] = {**ours, "hit_rate": ours["hit_rate"] / 2}
        sweep[name] = {**workload, "systems": systems}
    path = tmp_path / "sweep.png"
    report.write_plot(path, sweep, budgets=["1GiB", "1MiB"], title="sweep")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_batches_keep_arrival_order_and_wait_for_an_earlier_turn() -> None:
    chat = make_workload("chat", 30, seed=0, vocab=1000)
    for size in (1, 3, 8):
        cut = batches(chat, size)
        assert [i for batch in cut for i in batch] == list(range(30))
        assert all(1 <= len(batch) <= size for batch in cut)
        for batch in cut:
            assert not any(chat.requests[i].follows in batch for i in batch)
    # Only the dependency cuts a batch early: the next request always follows one in the batch.
    for batch, after in itertools.pairwise(cut):
        if len(batch) < 8:
            assert chat.requests[after[0]].follows in batch
    assert batches(make_workload("fewshot", 10, seed=0, vocab=1000), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="batch size"):
        batches(chat, 0)


def test_prompt_lengths_count_the_history() -> None:
    chat = make_workload("chat", 12, seed=1, vocab=1000)
    lengths = prompt_lengths(chat)
    for i, request in enumerate(chat.requests):
        before = 0 if request.follows is None else lengths[request.follows] + request.new_tokens
        assert lengths[i] == before + len(request.tokens)


def test_hf_manual_refuses_batches(tiny: Any) -> None:
    workload = make_workload("fewshot", 4, seed=0, vocab=512, quick=True)
    with pytest.raises(ValueError, match="one request at a time"):
        run_workload(workload, [NoCache(tiny), HfManual(tiny)], batch_size=2)


def test_hf_cb_shares_pages_of_a_chat_and_matches_no_cache(tiny: Any) -> None:
    # Two conversations after one 300-token system prompt, then a second turn of the first.
    g = torch.Generator().manual_seed(7)
    system_prompt = torch.randint(3, 512, (300,), generator=g).tolist()
    user = [torch.randint(3, 512, (n,), generator=g).tolist() for n in (30, 20, 25)]
    workload = Workload(
        "chat",
        "two conversations, three turns",
        [
            Request(tuple(system_prompt + user[0]), 8, 300, 0),
            Request(tuple(system_prompt + user[1]), 8, 300, 0),
            Request(tuple(user[2]), 8, 300, 0, follows=0),
        ],
    )
    cb = HfContinuousBatching(tiny, 2**30, workload)
    result = run_workload(workload, [NoCache(tiny), cb], batch_size=2)
    assert result.mismatches == {"no-cache": 0, "hf-cb": 0}
    hf_cb = result.systems["hf-cb"]
    # The first two are prefilled in the same step, so neither finds the other's page; the
    # third (its own batch) reuses the first page of its conversation, prompt and reply.
    assert hf_cb.hit_tokens == 256 and hf_cb.prompt_tokens == sum(result.prompt_lengths)
    assert len(hf_cb.ttft_s) == 3 and len(hf_cb.batch_s) == 2
    assert cb.num_blocks <= sum(-(-(n + 8) // 256) for n in result.prompt_lengths) + 1
    assert cb._manager is None  # closed by the runner


def test_overhead_reports_the_five_steps(tiny: Any) -> None:
    r = measure(tiny, requests=6, repeats=1, step_prompts=3)
    assert tuple(r.steps) == STEPS == ("input checks", "match", "gather", "DynamicCache", "insert")
    assert all(us > 0 for us in r.steps.values())
    assert r.differing == 0 and r.hit_tokens == r.reusable_tokens > 0
    assert r.added_q1_us <= r.added_q3_us and r.model_us > 0
    with pytest.raises(ValueError, match="requests"):
        measure(tiny, requests=2)


def test_llama_1b_preset_has_the_shape_of_llama_3_2_1b() -> None:
    options = dict(PRESETS["llama-1b"])
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 1_235_814_400
    assert config.tie_word_embeddings and config.head_dim == 64 and config.num_key_value_heads == 8


@pytest.mark.parametrize(
    ("systems", "message"),
    [
        ("prefixcache,ideal", "no-cache must be among them"),
        ("no-cache,vllm", "unknown ['vllm']"),
        ("no-cache,ideal,ideal", "named twice"),
    ],
)
def test_systems_option_is_checked(systems: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--preset", "tiny", "--systems", systems])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_gemma3_and_qwen3_5_presets_have_their_layer_patterns() -> None:
    sizes = {}
    for name in ("gemma3", "qwen3.5"):
        options = dict(PRESETS[name])
        config = AutoConfig.for_model(options.pop("model_type"), **options)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        sizes[name] = sum(p.numel() for p in model.parameters())
        assert len(config.layer_types) == config.num_hidden_layers
    assert 45e6 < sizes["gemma3"] < 65e6 and 45e6 < sizes["qwen3.5"] < 65e6
    gemma = PRESETS["gemma3"]
    assert (
        gemma["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 2 and gemma["sliding_window"] == 512
    )
    qwen = PRESETS["qwen3.5"]
    assert qwen["layer_types"] == (["linear_attention"] * 3 + ["full_attention"]) * 2


@pytest.mark.parametrize(("shape", "batch"), [("gemma3", 1), ("gemma3", 2), ("qwen3_5", 1), ("qwen3_5", 2)])
def test_systems_match_no_cache_on_sliding_window_and_recurrent_models(shape: str, batch: int) -> None:
    """Every system serves a model with sliding-window or linear-attention layers exactly,
    ideal included (the model's own cache after the prefix), and prefixcache reports its pools."""
    model = layer_kinds.build(shape)
    vocab = model.config.vocab_size
    workload = make_workload("longdoc", 9, seed=0, vocab=vocab, quick=True)
    systems = [NoCache(model), PrefixCached(model, "64MiB", window_ratio=0.25, snapshot_interval=64), Ideal(model)]
    if batch == 1:
        systems.insert(1, HfManual(model))
    result = run_workload(workload, systems, batch_size=batch)
    assert set(result.mismatches.values()) == {0}
    ours = result.systems["prefixcache"]
    assert ours.hit_tokens is not None and ours.prompt_tokens and ours.memory is not None
    # In a padded batch the rows reuse only what they share (counted from what the model computed).
    assert 0 < ours.hit_tokens / ours.prompt_tokens <= result.best_hit_rate + 1e-12
    memory = ours.memory
    assert ours.peak_pool_bytes and ours.peak_pool_bytes > memory["cached_tokens_at_peak"] * memory["bytes_per_token"]
    summary = report.summarize(result)
    text = report.table("longdoc", summary)
    assert "outputs identical to no-cache: yes" in text
    if shape == "gemma3":
        assert memory["window_bytes_per_token"] > 0 and memory["bytes_per_snapshot"] is None
        # The window pool holds a quarter of a row per token of the pool.
        per_token = memory["bytes_per_token"] + 0.25 * memory["window_bytes_per_token"]
        assert memory["reserved_bytes_per_token"] == pytest.approx(per_token, rel=1e-3)
        assert memory["bytes_per_cached_token"] < memory["bytes_per_token"] + memory["window_bytes_per_token"]
        assert "window pool" in text and "window_ratio 0.25" in text
    else:
        assert memory["bytes_per_snapshot"] > 0 and memory["snapshots_at_peak"] > 0
        assert "B/snapshot" in text and "snapshot_interval 64" in text
    assert json.dumps(summary)  # plain data


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--window-ratio", "0.5,2"], "--window-ratio: expected a number in ("),
        (["--window-ratio", "half"], "--window-ratio: expected numbers"),
        (["--snapshot-interval", "-1"], "--snapshot-interval: expected an int >= 0"),
        (["--state-share", "0"], "--state-share: expected a number in ("),
    ],
)
def test_cache_options_are_checked(option: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--preset", "tiny", *option])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_reuse_in_padded_batches_counted_by_the_cache_is_what_the_model_was_spared(tiny: Any) -> None:
    """The cache's hit count in left-padded batches equals what the positions fed to the model
    leave out: each row reuses the batch's shared cached length C less its padding."""
    workload = make_workload("fewshot", 12, seed=0, vocab=512, quick=True)
    cached = PrefixCached(tiny, "64MiB")
    fed: list[int] = []
    spared: list[int] = []

    def count(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        fed.append(int(kwargs["input_ids"].shape[1]))

    run = cached.run

    def counted_run(batch: Any, prepared: Any, streamer: Any) -> Any:
        fed.clear()
        served = run(batch, prepared, streamer)
        shared = batch.input_ids.shape[1] - (fed[0] if fed else 0)  # the first pass computes from C
        spared.append(sum(max(0, shared - pad) for pad in batch.pads))
        return served

    cached.run = counted_run  # type: ignore[method-assign]
    handle = tiny.register_forward_pre_hook(count, with_kwargs=True)
    try:
        result = run_workload(workload, [NoCache(tiny), cached], batch_size=4)
    finally:
        handle.remove()
    assert len(fed) > 0, "the hook saw no forward pass"
    assert set(result.mismatches.values()) == {0}
    assert result.systems["prefixcache"].hit_tokens == sum(spared) > 0


def test_sampling_draws_the_same_samples_in_every_system_and_reuses_the_prompt(tiny: Any) -> None:
    workload = make_workload("sampling", 8, seed=0, vocab=prefixcache.hf.vocab_size(tiny), quick=True)
    assert {r.samples for r in workload.requests} == {4}
    systems = [NoCache(tiny), HfManual(tiny), PrefixCached(tiny, "64MiB"), Ideal(tiny)]
    result = run_workload(workload, systems, seed=3)
    assert result.mismatches == {s.name: 0 for s in systems}
    reused = result.systems["prefixcache"].hit_tokens
    assert reused is not None and reused > 0
    # One request by hand: four different samples of the same prompt, one row each.
    request = workload.requests[0]
    prompt = torch.tensor([request.tokens])
    batch = padded_requests([request], [prompt])
    torch.manual_seed(0)
    served = NoCache(tiny).run(batch, None, None)
    rows = served.sequences[0]
    assert rows.shape == (4, prompt.shape[1] + request.new_tokens)
    assert torch.equal(rows[:, : prompt.shape[1]], prompt.expand(4, -1))
    assert len({tuple(r.tolist()) for r in rows}) > 1, "four samples and all the same: not sampled"
