"""``hf-cb``: transformers' continuous batching (paged KV) with block sharing, as a benchmark system.

What transformers 5.23 offers: ``model.generate_batch(inputs=[token id lists], ...)``
is a wrapper that opens ``model.continuous_batching_context_manager(...)`` (it sizes
a paged KV cache, warms up and starts a background thread that schedules requests),
calls ``manager.add_requests(...)``, collects one ``GenerationOutput`` per request
(``generated_tokens``, and with ``record_timestamps=True`` the ``time.perf_counter()``
of each generated token), then stops the thread and frees the cache. With
``ContinuousBatchingConfig(allow_block_sharing=True)`` (the default) a finished
request's complete pages stay cached under a hash of their tokens and all before
them, and a later request whose prompt starts with the same pages reuses them.

How this system uses it, and why:

- The context manager is opened once per workload, outside the clock, as
  ``wrap(model)`` is for prefixcache; each batch is then ``add_requests`` plus
  collecting its results, timed. Calling ``generate_batch`` per batch would also
  time starting and stopping the thread (the stop waits up to 0.1 s, the loop's
  idle wait) for every batch and, unless told to keep its manager
  (``persistent_manager=True``), building a new paged cache without the pages
  earlier batches left.
- The paged cache holds as many bytes of KV as prefixcache's pool is given
  (``budget``; requests in flight included), or fewer when the whole workload
  fits in fewer pages, in pages of 256 tokens (the default). Left to size itself
  it takes 60% of host memory on a CPU and 90% of free GPU memory, which the
  other systems need; and its attention masks grow with the pages it may read.
- Greedy (``do_sample=False``), ``max_new_tokens`` as for the others, and no
  end-of-sequence token (the others are held to ``min_new_tokens``).
- ``auto_switch_to_flash=False``: the manager would otherwise switch the model's
  attention to flash attention, when installed, for every system.
- Its TTFT is per request: the timestamp of the request's first token, less the
  time its batch was sent.
- Reuse is counted by wrapping the paged cache's ``search_prefix_match``: the
  prompt tokens whose pages were found cached.

Reuse is whole pages (256 tokens here), and a page is registered for sharing after a
forward pass only while its request is still running: a request that finishes on
its first generated token (one new token, as in the few-shot and unique workloads)
leaves nothing to share in transformers 5.23.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from .systems import PaddedRequests, Served, System
from .workloads import Workload, prompt_lengths

__all__ = ["HfContinuousBatching"]

PAGE_SIZE = 256
_RESULT_WAIT_S = 600.0


class HfContinuousBatching(System):
    name = "hf-cb"

    def __init__(self, model: Any, budget: int, workload: Workload, *, page_size: int = PAGE_SIZE) -> None:
        """``budget``: bytes of KV for the paged cache; ``workload``: what it will serve
        (the cache is never made larger than every request held at once would need)."""
        from transformers import ContinuousBatchingConfig, GenerationConfig

        super().__init__(model)
        self.page_size = page_size
        self.page_bytes = page_size * _kv_bytes_per_token(model)
        lengths = prompt_lengths(workload)
        whole = sum(-(-(n + r.new_tokens) // page_size) for n, r in zip(lengths, workload.requests, strict=True))
        self.num_blocks = max(1, min(budget // self.page_bytes, whole + 1))
        self.generation_config = GenerationConfig(do_sample=False, eos_token_id=-1)
        self.cb_config = ContinuousBatchingConfig(
            allow_block_sharing=True,
            page_size=page_size,
            num_blocks=self.num_blocks,
            auto_switch_to_flash=False,
        )
        self._stack = contextlib.ExitStack()
        self._manager: Any = None
        self.setup_s = 0.0
        self.attn_implementation = ""
        self._hit_tokens = 0
        self._prompt_tokens = 0
        self._counting = False

    def _open(self) -> Any:
        """Open the manager and send it one short untimed request (first-call costs)."""
        start = time.perf_counter()
        manager = self._stack.enter_context(
            self.model.continuous_batching_context_manager(
                generation_config=self.generation_config,
                continuous_batching_config=self.cb_config,
                block=True,
                timeout=5,
            )
        )
        self._manager = manager
        self.attn_implementation = str(getattr(self.model.config, "_attn_implementation", "?"))
        # Shorter than a page with its reply, so that nothing it computes can be shared later.
        g = torch.Generator().manual_seed(54321)
        vocab = int(self.model.get_input_embeddings().num_embeddings)
        warm = torch.randint(3, vocab, (self.page_size // 2,), generator=g)
        self._collect(manager.add_requests(inputs=[warm.tolist()], max_new_tokens=2))
        self._count_hits(manager)
        self.setup_s = time.perf_counter() - start
        return manager

    def _count_hits(self, manager: Any) -> None:
        cache: Any = getattr(getattr(manager, "batch_processor", None), "cache", None)
        search = getattr(cache, "search_prefix_match", None)
        if cache is None or search is None:
            return

        def counted(request_id: str, prompt_ids: list[int]) -> int:
            found = int(search(request_id, prompt_ids))
            self._hit_tokens += found
            return found

        cache.search_prefix_match = counted
        self._counting = True

    def prepare(self, batch: PaddedRequests, reusable: list[int]) -> Any:
        if self._manager is None:
            self._open()
        return [prompt[0].tolist() for prompt in batch.prompts]  # generate_batch takes lists of ids

    @torch.no_grad()
    def run(self, batch: PaddedRequests, prepared: Any, streamer: Any) -> Served:
        ids = self._manager.add_requests(inputs=prepared, max_new_tokens=batch.new_tokens, record_timestamps=True)
        results = self._collect(ids)
        self._prompt_tokens += sum(len(p) for p in prepared)
        sequences = [results[i].prompt_ids + results[i].generated_tokens for i in ids]
        stamps = [results[i].timestamps for i in ids]
        firsts = [float(s[0]) for s in stamps if s]
        return Served(sequences, firsts if len(firsts) == len(ids) else None)

    def _collect(self, ids: list[str]) -> dict[str, Any]:
        manager = self._manager
        results: dict[str, Any] = {}
        deadline = time.perf_counter() + _RESULT_WAIT_S
        while len(results) < len(ids):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                if result.error is not None:
                    raise RuntimeError(f"hf-cb: request {result.request_id} failed: {result.error}")
                results[result.request_id] = result
            elif result is None and (not manager.is_running() or time.perf_counter() > deadline):
                raise RuntimeError(f"hf-cb: the generation loop returned {len(results)} of {len(ids)} results")
        return results

    def hits(self) -> tuple[int, int] | None:
        return (self._hit_tokens, self._prompt_tokens) if self._counting else None

    def notes(self) -> list[str]:
        mib = self.num_blocks * self.page_bytes / 2**20
        cfg = getattr(self._manager, "continuous_batching_config", None)
        graphs = getattr(cfg, "use_cuda_graph", None)
        return [
            f"{self.name}: paged cache of {self.num_blocks} pages x {self.page_size} tokens ({mib:.1f} MiB), "
            f"block sharing on, attention {self.attn_implementation}, "
            f"max batch tokens {getattr(cfg, 'max_batch_tokens', '?')}, cuda graphs {graphs}; "
            f"set up in {self.setup_s:.1f} s outside the clock; TTFT per request from its first token's timestamp"
        ]

    def close(self) -> None:
        self._stack.close()
        self._manager = None


def _kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV one token takes over all layers, read from one forward pass."""
    from .. import hf

    ids = torch.zeros((1, 1), dtype=torch.long, device=model.get_input_embeddings().weight.device)
    with torch.no_grad():
        layers = hf.kv_of(hf.prompt_cache(model, ids))
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
