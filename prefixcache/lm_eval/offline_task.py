"""An MMLU-shaped task that needs no download: a seeded dataset, its task YAMLs and a tokenizer.

``write_task(directory, seed=0)`` writes, in a few seconds:

    directory/
      tokenizer/                   a word-level PreTrainedTokenizerFast over the dataset's words
      data/<subject>_{dev,test}.json
      _offline_mmlu_template.yaml  what every subject's task shares (MMLU's own template)
      offline_mmlu_<subject>.yaml  one task per subject
      _offline_mmlu.yaml           the group ``offline_mmlu``, accuracy weighted by size

Each subject is a task in MMLU's format: 5-shot from the first five ``dev`` questions
(``sampler: first_n``), four choices answered " A" to " D", a description naming the
subject. Subjects differ in the length of their exemplars, so their headers (the
description and five answered exemplars) run from about 300 to 700 tokens. The words are
pseudo-words drawn from the seed; the vocabulary (under 512 tokens) fits the built-in
``tiny`` and ``default`` presets. Load the task with
``TaskManager(include_path=str(directory))`` or ``lm_eval --include_path directory``.

    python -m prefixcache.lm_eval.offline_task DIR [--seed 0] [--questions 20]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any, NamedTuple

from ..arguments import check_int

__all__ = ["GROUP", "OfflineTask", "build_tokenizer", "write_task"]

GROUP = "offline_mmlu"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
FIXED_WORDS = (
    *("The", "following", "are", "multiple", "choice", "questions", "with", "answers", "about"),
    *("Answer", "A", "B", "C", "D", "(", ")", ".", ":", ",", "?"),
)
N_WORDS = 420
"""Pseudo-words in the vocabulary; with the special tokens and fixed words it stays under 512."""
HEADER_TOKENS = (300, 400, 500, 600, 700)
"""The target length of each subject's header; the number of subjects is its length."""

TEMPLATE = """\
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: 5
output_type: multiple_choice
doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\
  \\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


class OfflineTask(NamedTuple):
    """What :func:`write_task` wrote."""

    directory: Path
    """Give it to ``TaskManager(include_path=...)`` or ``--include_path``."""
    tokenizer: Path
    """A directory ``AutoTokenizer.from_pretrained`` loads."""
    group: str
    """The group of all subjects' tasks: ``offline_mmlu``."""
    tasks: tuple[str, ...]
    """One task per subject."""


def write_task(
    directory: str | Path, *, seed: int = 0, questions: int = 20, header_tokens: tuple[int, ...] = HEADER_TOKENS
) -> OfflineTask:
    """Write the dataset, the task YAMLs and the tokenizer under ``directory`` (created if needed).

    The same ``seed``, ``questions`` (test questions per subject) and ``header_tokens``
    (one subject per entry: its header's approximate length in tokens) write the same
    files. Raises ``ValueError`` for a ``questions`` below 1 or a header length outside
    100 to 2,000 tokens.
    """
    check_int(questions, "questions", 1)
    if not header_tokens or any(not isinstance(n, int) or not 100 <= n <= 2000 for n in header_tokens):
        raise ValueError(f"header_tokens: expected one or more ints from 100 to 2000, got {header_tokens!r}")
    root = Path(directory).resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = _pseudo_words(rng, N_WORDS)
    content = words[len(header_tokens) :]  # the first words name the subjects
    tasks = []
    for subject, target in zip(words, header_tokens, strict=False):
        # A header is the description (~12 tokens) and five exemplars, each a question,
        # four "X. choice" lines (3 + choice words) and "Answer: X" (3 tokens).
        choice_words = 2
        question_words = max(5, round((target - 12) / 5) - 4 * (2 + choice_words) - 3)
        dev = [_question(rng, content, question_words, choice_words, subject) for _ in range(5)]
        test = [_question(rng, content, rng.randint(30, 50), choice_words, subject) for _ in range(questions)]
        for split, rows in (("dev", dev), ("test", test)):
            (root / "data" / f"{subject}_{split}.json").write_text(json.dumps(rows, indent=0) + "\n")
        task = f"{GROUP}_{subject}"
        description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        tasks.append(task)
        data_files = {split: str(root / "data" / f"{subject}_{split}.json") for split in ("dev", "test")}
        (root / f"{task}.yaml").write_text(
            f"include: _{GROUP}_template.yaml\n"
            f"task: {task}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files: {json.dumps(data_files)}\n"
            f"description: {json.dumps(description)}\n"
        )
    (root / f"_{GROUP}_template.yaml").write_text(TEMPLATE)
    (root / f"_{GROUP}.yaml").write_text(
        f"group: {GROUP}\ntask:\n"
        + "".join(f"  - {t}\n" for t in tasks)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 1.0\n"
    )
    tokenizer = build_tokenizer(words)
    tokenizer.save_pretrained(str(root / "tokenizer"))
    return OfflineTask(root, root / "tokenizer", GROUP, tuple(tasks))


def build_tokenizer(words: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``words``, the fixed words and punctuation.

    Splits on whitespace and isolates each punctuation mark; prepends ``<s>`` like
    Llama's tokenizer; decodes by joining tokens with spaces. Ids: the four special
    tokens, then the fixed words, then ``words``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *FIXED_WORDS, *words):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=4096,
    )


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words: list[str] = []
    seen = set(FIXED_WORDS)
    while len(words) < n:
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _question(rng: random.Random, words: list[str], length: int, choice_words: int, subject: str) -> dict[str, Any]:
    text = " ".join(rng.choice(words) for _ in range(length)) + " ?"
    choices = [" ".join(rng.choice(words) for _ in range(choice_words)) for _ in range(4)]
    return {"question": text, "subject": subject, "choices": choices, "answer": rng.randrange(4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefixcache.lm_eval.offline_task", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=20, help="test questions per subject (default 20)")
    args = parser.parse_args(argv)
    task = write_task(args.directory, seed=args.seed, questions=args.questions)
    print(f"wrote {len(task.tasks)} tasks (group {task.group}) under {task.directory}; tokenizer in {task.tokenizer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
