"""PrefixCacheLM gives lm-eval's HFLM results on the same model, computing fewer tokens.

Everything runs offline: the tiny built-in model and the offline MMLU-shaped task with
its word-level tokenizer (prefixcache/lm_eval/offline_task.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoTokenizer

import prefixcache
from prefixcache.lm_eval import PrefixCacheLM
from prefixcache.lm_eval.offline_task import OfflineTask, write_task

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> OfflineTask:
    return write_task(tmp_path_factory.mktemp("offline"), seed=1, questions=3, header_tokens=(150, 250))


@pytest.fixture(scope="module")
def tokenizer(task: OfflineTask) -> Any:
    return AutoTokenizer.from_pretrained(str(task.tokenizer))


class Counter:
    """Input tokens of every forward pass of a model."""

    def __init__(self, model: Any) -> None:
        self.tokens = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += 0 if ids is None else ids.numel()


def pair(dtype: torch.dtype, tokenizer: Any, **options: Any) -> tuple[HFLM, PrefixCacheLM, Counter]:
    model = prefixcache.load_model(preset="tiny", dtype=dtype, seed=3)
    hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, **options)
    cached = PrefixCacheLM(pretrained=model, tokenizer=tokenizer, budget="4MiB", **options)
    return hf, cached, Counter(model)


def mmlu_requests(task: OfflineTask, *, extra: bool = True) -> list[Instance]:
    """MMLU-style (context, " X") requests over both subjects, interleaved as lm-eval hands them over."""

    def show(row: dict[str, Any], answer: bool) -> str:
        lines = [row["question"], *(f"{c}. {t}" for c, t in zip("ABCD", row["choices"], strict=True)), "Answer:"]
        return "\n".join(lines) + (" " + "ABCD"[row["answer"]] if answer else "")

    per_subject = []
    for name in task.tasks:
        subject = name.removeprefix(task.group + "_")
        dev = json.loads((task.directory / "data" / f"{subject}_dev.json").read_text())
        test = json.loads((task.directory / "data" / f"{subject}_test.json").read_text())
        header = f"About {subject}.\n\n" + "\n\n".join(show(r, True) for r in dev) + "\n\n"
        per_subject.append([header + show(r, False) for r in test])
    pairs = [(ctx, f" {c}") for group in zip(*per_subject, strict=True) for ctx in group for c in "ABCD"]
    if extra:
        pairs += [
            ("", " About A . B"),  # empty context: HFLM puts the prefix token before it
            (per_subject[0][0], " A . B C"),  # several continuation tokens
        ]
    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]


def compare_loglikelihoods(a: list[tuple[float, bool]], b: list[tuple[float, bool]], tolerance: float) -> None:
    assert len(a) == len(b)
    worst = max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))
    assert worst <= tolerance, worst
    assert [x[1] for x in a] == [y[1] for y in b]


def test_loglikelihood_float64_matches_hflm_and_reuses(task: OfflineTask, tokenizer: Any) -> None:
    hf, cached, counter = pair(torch.float64, tokenizer)
    requests = mmlu_requests(task)
    expected = hf.loglikelihood(requests, disable_tqdm=True)
    hf_tokens, counter.tokens = counter.tokens, 0
    got = cached.loglikelihood(requests, disable_tqdm=True)
    compare_loglikelihoods(expected, got, 1e-9)
    assert any(g for _, g in expected) or not all(g for _, g in expected)  # both kinds are compared
    stats = cached.cache.stats
    assert stats.hit_tokens > 0
    # Each subject's header is computed once: far fewer tokens than HFLM's forward passes.
    assert counter.tokens < 0.5 * hf_tokens, (counter.tokens, hf_tokens)


def test_loglikelihood_float32_and_batches(task: OfflineTask, tokenizer: Any) -> None:
    hf, cached, _ = pair(torch.float32, tokenizer)
    requests = mmlu_requests(task)
    expected = hf.loglikelihood(requests, disable_tqdm=True)
    compare_loglikelihoods(expected, cached.loglikelihood(requests, disable_tqdm=True), 1e-4)
    cached.batch_size_per_gpu = 3  # left-padded batches of rows with different lengths
    cached.cache.clear()
    compare_loglikelihoods(expected, cached.loglikelihood(requests, disable_tqdm=True), 1e-4)
    assert cached.cache.stats.hit_tokens > 0


def test_truncation_and_rolling_match_hflm(task: OfflineTask, tokenizer: Any) -> None:
    hf, cached, _ = pair(torch.float64, tokenizer, max_length=40)
    requests = mmlu_requests(task, extra=False)[:8]  # contexts of 150+ tokens, cut from the left to 40
    compare_loglikelihoods(hf.loglikelihood(requests), cached.loglikelihood(requests), 1e-9)
    # Several windows per text; the last text twice. A window scores every position it
    # computes, so even a cached one is computed again: nothing may be reused.
    texts = [r.args[0] for r in requests[::4]] + ["A B", requests[0].args[0]]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    expected = hf.loglikelihood_rolling(rolling, disable_tqdm=True)
    before = cached.cache.stats
    got = cached.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert len(got) == len(expected) == len(texts)
    assert max(abs(x - y) for x, y in zip(expected, got, strict=True)) <= 1e-9
    assert got[-1] == got[0]
    after = cached.cache.stats
    assert after.requests - before.requests > len(texts)  # windows, each through the cache
    assert after.hit_tokens == before.hit_tokens


def test_generate_until_matches_hflm(task: OfflineTask, tokenizer: Any) -> None:
    hf, cached, _ = pair(torch.float64, tokenizer)
    contexts = [r.args[0] for r in mmlu_requests(task, extra=False)[::4]]
    gen = [{"until": ["?"], "max_gen_toks": 6, "do_sample": False}, {"until": ["."], "max_gen_toks": 4}]
    requests = [Instance("generate_until", {}, (c, gen[i % 2]), i) for i, c in enumerate(contexts)]
    expected = hf.generate_until(requests, disable_tqdm=True)
    assert cached.generate_until(requests, disable_tqdm=True) == expected
    assert cached.cache.stats.hit_tokens > 0
    cached.batch_size_per_gpu = 2  # left-padded generation through the cache
    assert cached.generate_until(requests, disable_tqdm=True) == expected
    assert len(set(expected)) > 1  # the outputs depend on the prompts


def test_simple_evaluate_same_accuracy(task: OfflineTask, tokenizer: Any) -> None:
    hf, cached, _ = pair(torch.float64, tokenizer)
    manager = TaskManager(include_path=str(task.directory))
    results = [
        lm_eval.simple_evaluate(model=lm, tasks=[task.group], task_manager=manager, verbosity="ERROR")
        for lm in (hf, cached)
    ]
    for name in (task.group, *task.tasks):
        a, b = (r["results"][name]["acc,none"] for r in results)
        assert a == b
    assert results[1]["n-samples"][task.tasks[0]]["effective"] == 3  # every question ran
    assert cached.cache.stats.hit_rate > 0.5


def test_registered_and_options(tokenizer: Any) -> None:
    assert get_model("prefixcache") is PrefixCacheLM
    assert get_model("hf") is HFLM  # lm-eval's own models are still found
    model = prefixcache.load_model(preset="tiny", dtype=torch.float32)
    lm = PrefixCacheLM(pretrained=model, tokenizer=tokenizer, budget="2MiB", host_budget="4MiB")
    assert lm.cache is lm.cached.cache
    assert lm.cache.stats.host_capacity_tokens > 0
    with pytest.raises(ValueError, match="budget"):
        PrefixCacheLM(pretrained=model, tokenizer=tokenizer, budget="lots")
    with pytest.raises(TypeError, match="bugdet"):
        PrefixCacheLM(pretrained=model, tokenizer=tokenizer, bugdet="1GiB")


def test_import_needs_the_extra_and_prefixcache_does_not() -> None:
    code = (
        "import sys; import prefixcache; assert 'lm_eval' not in sys.modules; sys.modules['lm_eval'] = None\n"
        "try:\n    import prefixcache.lm_eval\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "pip install 'prefixcache[lm-eval]'" in out.stdout


def test_command_line_writes_results(task: OfflineTask, tokenizer: Any, tmp_path: Path) -> None:
    model = prefixcache.load_model(preset="tiny", dtype=torch.float32)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    argv = [
        *("--model_args", f"pretrained={tmp_path / 'model'},budget=8MiB,dtype=float32"),
        *("--device", "cpu", "--tasks", task.tasks[0], "--include_path", str(task.directory)),
        *("--limit", "2", "--output_path", str(tmp_path / "out")),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "prefixcache", "eval", *argv], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "prefixcache" in out.stdout and task.tasks[0] in out.stdout
    (written,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(written.read_text())
    assert results["config"]["model"] == "prefixcache"
    assert 0 <= results["results"][task.tasks[0]]["acc,none"] <= 1
