"""The benchmark's workloads: seeded streams of requests.

- ``fewshot`` (the default) is shaped like MMLU 5-shot: a few subjects, each with
  its own instruction and five worked exemplars (the shared header, ~600 tokens),
  and many questions (~60 tokens each) asked in shuffled order across subjects;
  one token (the answer letter) is generated per question.
- ``chat``: conversations that share one system prompt, interleaved turn by turn;
  each turn's prompt is the whole history so far (earlier user messages and the
  model's own replies) plus a new user message.
- ``longdoc``: a few long documents (2,000-4,000 tokens each), each followed by
  several short questions (20-40 tokens), asked in shuffled order across documents;
  a short answer (4 tokens) is generated per question. The workload where a
  sliding-window model's memory matters: a hit on a document needs the KV of its
  every token in the full-attention layers but only its last window's in the
  sliding-window layers.
- ``unique``: prompts that share nothing, the overhead test.
- ``sampling``: fewshot's prompts, each sampled several times (8 sequences of 32
  tokens, ``num_return_sequences``, seeded): pass@k, self-consistency, best-of-n and
  group rollouts, where every sample shares the prompt.

Prompts are token ids drawn from a seeded generator with these lengths; given a
tokenizer, they are real text built from a seeded word list instead.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["WORKLOADS", "Request", "Workload", "batches", "make_workload", "prompt_ids", "prompt_lengths"]

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Request:
    """One prompt to send, with what a baseline may be told about it."""

    tokens: tuple[int, ...]
    """The prompt's own tokens (for a chat turn: the new user message only)."""
    new_tokens: int
    """Tokens to generate."""
    shared_prefix: int
    """Leading tokens shared with other requests that a user could name in advance
    (the few-shot header, the system prompt): what ``hf-manual`` is told."""
    group: int
    """Requests with the same group share that named prefix."""
    follows: int | None = None
    """For a chat turn, the index of the conversation's previous turn: the prompt is
    that turn's prompt and reply followed by ``tokens``."""
    samples: int = 1
    """Sequences sampled from the prompt (``num_return_sequences``); 1: one greedy sequence."""


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    requests: list[Request] = field(repr=False)


class _Source:
    """Token runs of given lengths: random ids, or text of about that many tokens."""

    def __init__(self, rng: random.Random, vocab: int, encode: Encode | None) -> None:
        self.rng = rng
        self.vocab = vocab
        self.encode = encode

    def run(self, n: int) -> list[int]:
        if self.encode is None:
            return [self.rng.randrange(3, self.vocab) for _ in range(n)]
        out: list[int] = []
        while len(out) < n:
            words = " ".join(self.rng.choice(_WORDS) for _ in range(12))
            out += self.encode(" " + words.capitalize() + ".")
        return out[:n]


def fewshot(source: _Source, n_requests: int, *, subjects: int = 4, header: int = 600, question: int = 60) -> Workload:
    rng = source.rng
    headers = [source.run(header) for _ in range(subjects)]
    order = [i % subjects for i in range(n_requests)]
    rng.shuffle(order)
    requests = [
        Request(tuple(headers[s] + source.run(rng.randint(question - 10, question + 10))), 1, header, s) for s in order
    ]
    return Workload(
        "fewshot",
        f"{subjects} subjects x {header}-token shared header (instruction + 5 exemplars), "
        f"{n_requests} questions of {question - 10}-{question + 10} tokens in shuffled order, 1 token generated",
        requests,
    )


def chat(
    source: _Source, n_requests: int, *, conversations: int = 4, system: int = 300, message: int = 40, reply: int = 16
) -> Workload:
    rng = source.rng
    system_prompt = source.run(system)
    last: list[int | None] = [None] * conversations
    requests: list[Request] = []
    for _ in range(n_requests):
        c = rng.randrange(conversations)
        user = source.run(rng.randint(message // 2, message * 3 // 2))
        if last[c] is None:
            requests.append(Request(tuple(system_prompt + user), reply, system, 0))
        else:
            requests.append(Request(tuple(user), reply, system, 0, follows=last[c]))
        last[c] = len(requests) - 1
    return Workload(
        "chat",
        f"{conversations} conversations sharing a {system}-token system prompt, turns interleaved at random, "
        f"{message // 2}-{message * 3 // 2}-token user messages, {reply}-token replies kept in the history",
        requests,
    )


def longdoc(
    source: _Source,
    n_requests: int,
    *,
    documents: int = 3,
    shortest: int = 2000,
    longest: int = 4000,
    question: int = 30,
    answer: int = 4,
) -> Workload:
    rng = source.rng
    docs = [source.run(rng.randint(shortest, longest)) for _ in range(documents)]
    order = [i % documents for i in range(n_requests)]
    rng.shuffle(order)
    requests = [
        Request(tuple(docs[d] + source.run(rng.randint(question * 2 // 3, question * 4 // 3))), answer, len(docs[d]), d)
        for d in order
    ]
    return Workload(
        "longdoc",
        f"{documents} documents of {', '.join(str(len(d)) for d in docs)} tokens, {n_requests} questions of "
        f"{question * 2 // 3}-{question * 4 // 3} tokens after them in shuffled order, {answer} tokens generated",
        requests,
    )


def sampling(
    source: _Source, n_requests: int, *, header: int = 600, question: int = 60, samples: int = 8, new: int = 32
) -> Workload:
    shaped = fewshot(source, n_requests, header=header, question=question)
    requests = [dataclasses.replace(r, new_tokens=new, samples=samples) for r in shaped.requests]
    return Workload(
        "sampling",
        f"fewshot's prompts (4 x {header}-token headers, {question - 10}-{question + 10}-token questions), "
        f"{n_requests} requests each sampling {samples} sequences of {new} tokens (seeded per request)",
        requests,
    )


def unique(source: _Source, n_requests: int, *, length: int = 600) -> Workload:
    requests = [Request(tuple(source.run(length)), 1, 0, i) for i in range(n_requests)]
    return Workload("unique", f"{n_requests} prompts of {length} tokens sharing nothing, 1 token generated", requests)


WORKLOADS = ("fewshot", "chat", "longdoc", "unique", "sampling")


def make_workload(
    name: str, n_requests: int, *, seed: int, vocab: int, encode: Encode | None = None, quick: bool = False
) -> Workload:
    """Build workload ``name`` of ``n_requests`` requests from ``seed``.

    ``quick`` shortens prompts (a smoke test, not a measurement). Raises
    ``ValueError`` for an unknown name or fewer than one request.
    """
    if n_requests < 1:
        raise ValueError(f"requests: expected at least 1, got {n_requests}")
    source = _Source(random.Random(seed), vocab, encode)
    if name == "fewshot":
        return fewshot(source, n_requests, header=200 if quick else 600, question=30 if quick else 60)
    if name == "chat":
        return chat(source, n_requests, system=100 if quick else 300, reply=4 if quick else 16)
    if name == "longdoc":
        if quick:
            return longdoc(source, n_requests, shortest=300, longest=500, question=15, answer=2)
        return longdoc(source, n_requests)
    if name == "unique":
        return unique(source, n_requests, length=200 if quick else 600)
    if name == "sampling":
        if quick:
            return sampling(source, n_requests, header=200, question=30, samples=4, new=8)
        return sampling(source, n_requests)
    raise ValueError(f"workload: expected one of {WORKLOADS}, got {name!r}")


def prompt_ids(request: Request, history: Sequence[torch.Tensor], device: torch.device | None = None) -> torch.Tensor:
    """The prompt of ``request`` as a ``[1, n]`` tensor on ``device`` (that of the history
    when not given); ``history[i]`` is request i's full output (prompt and reply), needed
    for chat turns."""
    if request.follows is None:
        return torch.tensor([request.tokens], dtype=torch.long, device=device)
    before = history[request.follows]
    own = torch.tensor([request.tokens], dtype=torch.long, device=device or before.device)
    return torch.cat([before.to(own.device), own], dim=1)


def prompt_lengths(workload: Workload) -> list[int]:
    """Each request's prompt length, history included (replies are ``new_tokens`` long).

    >>> prompt_lengths(Workload("w", "", [Request((5, 6), 2, 0, 0), Request((7,), 1, 0, 0, follows=0)]))
    [2, 5]
    """
    out: list[int] = []
    for request in workload.requests:
        before = 0
        if request.follows is not None:
            before = out[request.follows] + workload.requests[request.follows].new_tokens
        out.append(before + len(request.tokens))
    return out


def batches(workload: Workload, size: int) -> list[list[int]]:
    """The requests of ``workload`` cut into batches of at most ``size``, in arrival order.

    A batch also ends before a chat turn whose previous turn is in it (its prompt holds
    that turn's reply, not known until the batch returns) and before a request that
    generates another number of tokens or samples. Raises ``ValueError`` if ``size < 1``.

    >>> w = Workload("w", "", [Request((5,), 1, 0, 0), Request((6,), 1, 0, 0), Request((7,), 1, 0, 0, follows=0)])
    >>> batches(w, 8)
    [[0, 1], [2]]
    >>> batches(w, 1)
    [[0], [1], [2]]
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch size: expected an int >= 1, got {size!r}")
    out: list[list[int]] = []
    current: list[int] = []
    for i, request in enumerate(workload.requests):
        if current and (
            len(current) == size
            or request.follows in current
            or request.new_tokens != workload.requests[current[0]].new_tokens
            or request.samples != workload.requests[current[0]].samples
        ):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


_WORD_TEXT = """
the a of to and in is that for it as was with be by on not he this are or his from at which but have an they
you were her she there been one all we their has would when if so no will more out up into do any your what
some can only other new time could about than them these may first then two like over such our its also after
most used made many before must through back years where much way well down should because each just those
people how too little state good very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come since against go came right take
three place himself few house use during without again home around however small found thought went say part
once general high upon school every don does got united left number course war until always away something
fact though water less public put think almost hand enough far took head yet government system better set told
nothing night end why called didn eyes find going look asked later knew point next program city business give
group toward young days let room president side social given present several order national possible rather
second face per among form important often things looked early white case john become large big need four
within felt along children saw best church ever least power development light thing seemed family interest
want members mind country area others done turned although open god service problem certain
"""
_WORDS = tuple(_WORD_TEXT.split())
