"""``python -m prefixcache bench --quick`` runs end to end and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prefixcache.benchmark.workloads import make_workload

SUMMARY_KEYS = {
    "requests",
    "ttft_mean_ms",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "total_s",
    "speedup",
    "efficiency",
    "hit_rate",
    "peak_pool_bytes",
    "ttft_ms",
    "total_ms",
    "hit_rate_over_time",
}


def test_quick_fewshot_run_writes_consistent_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "prefixcache", "bench", "--quick", "--no-progress", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "outputs identical to no-cache: yes" in done.stdout
    data = json.loads(out.read_text())
    assert {"config", "machine", "workloads"} <= set(data)
    assert data["machine"]["torch"] and data["config"]["seed"] == 0
    fewshot = data["workloads"]["fewshot"]
    assert fewshot["outputs_identical"] is True
    assert set(fewshot["systems"]) == {"no-cache", "hf-manual", "prefixcache", "ideal"}
    for system in fewshot["systems"].values():
        assert set(system) >= SUMMARY_KEYS
        assert len(system["ttft_ms"]) == fewshot["requests"] == 12
        assert all(t > 0 for t in system["total_ms"])
    ours = fewshot["systems"]["prefixcache"]
    assert ours["hit_rate"] > 0
    # With the default budget holding the working set, every reusable token is reused.
    assert abs(ours["hit_rate"] - fewshot["best_hit_rate"]) < 1e-9
    assert 0 < ours["peak_pool_bytes"] <= 2**30


def test_workloads_are_seeded_and_shaped_as_documented() -> None:
    a = make_workload("fewshot", 20, seed=3, vocab=1000)
    b = make_workload("fewshot", 20, seed=3, vocab=1000)
    assert a.requests == b.requests
    assert a.requests != make_workload("fewshot", 20, seed=4, vocab=1000).requests
    headers = {r.tokens[: r.shared_prefix] for r in a.requests}
    assert len(headers) == 4 and all(r.shared_prefix == 600 and r.new_tokens == 1 for r in a.requests)
    assert all(50 <= len(r.tokens) - 600 <= 70 for r in a.requests)
    chat = make_workload("chat", 12, seed=0, vocab=1000)
    firsts = [r for r in chat.requests if r.follows is None]
    assert len({r.tokens[:300] for r in firsts}) == 1  # one system prompt
    assert all(r.follows is not None and r.follows < i for i, r in enumerate(chat.requests) if r not in firsts)
    unique = make_workload("unique", 5, seed=0, vocab=1000)
    assert len({r.tokens[:50] for r in unique.requests}) == 5


def test_longdoc_asks_short_questions_about_long_documents_in_shuffled_order() -> None:
    w = make_workload("longdoc", 24, seed=0, vocab=32000)
    assert w.requests == make_workload("longdoc", 24, seed=0, vocab=32000).requests
    docs = {r.group: r.tokens[: r.shared_prefix] for r in w.requests}
    assert sorted(docs) == [0, 1, 2] and all(2000 <= len(d) <= 4000 for d in docs.values())
    assert len(set(docs.values())) == 3
    for r in w.requests:
        assert r.tokens[: r.shared_prefix] == docs[r.group] and r.follows is None
        assert 20 <= len(r.tokens) - r.shared_prefix <= 40 and r.new_tokens == 4
        assert len(r.tokens) + r.new_tokens <= 4096  # within the default preset's positions
    groups = [r.group for r in w.requests]
    assert sorted(groups) == sorted(list(range(3)) * 8) and groups != sorted(groups)
    quick = make_workload("longdoc", 6, seed=0, vocab=512, quick=True)
    assert all(300 <= r.shared_prefix <= 500 and r.new_tokens == 2 for r in quick.requests)
