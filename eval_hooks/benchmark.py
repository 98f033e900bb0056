"""Throughput of the in-training eval hook: `runner.evaluate` timed on a synthetic data dir of N questions.

The data dir is written in the tasks' raw layouts (what `local_data.load` reads), with lengths roughly
those of the real benchmarks, so prompt sizes and batching are realistic while the content is not. The
model comes from the caller (`train/eval_benchmark.py` builds a shape preset): this module does not know
how it was made.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from eval_hooks.runner import evaluate

# Common English words, so that any tokenizer splits the synthetic text about as it splits real text.
WORDS = """the of and to in is that for it as was with be by on not he this are or his from at which but have
an they you were her she there all one their we can has been if more when will would who so no time water
number people year energy light cell plant animal river city market price law court state power force mass
speed heat temperature rate growth theory model value system group process change increase decrease level
point line area volume distance weight cost income trade policy reaction acid solution gas liquid solid body
blood heart brain muscle bone gene protein enzyme function equation circle triangle angle square total half
first second third small large high low long short early late new old""".split()
MMLU_SUBJECTS = ("high_school_biology", "college_physics", "econometrics", "professional_law")


def _words(rng: random.Random, median: float, sigma: float, low: int, high: int) -> str:
    # Lognormal lengths: most items short, a long tail (MMLU's reading passages, GSM8K's longer problems).
    n = min(high, max(low, round(rng.lognormvariate(0.0, sigma) * median)))
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _mmlu_row(rng: random.Random, subject: str) -> dict:
    # cais/mmlu rows; question median 25 words, choices median 4 words.
    return {
        "question": _words(rng, 25, 0.9, 5, 400) + "?",
        "subject": subject,
        "choices": [_words(rng, 4, 0.8, 1, 40) for _ in range(4)],
        "answer": rng.randrange(4),
    }


def _gsm8k_row(rng: random.Random) -> dict:
    # GSM8K `main` rows: question median 42 words, worked answer median 45 words, then "#### <number>".
    return {
        "question": _words(rng, 42, 0.35, 10, 200) + "?",
        "answer": f"{_words(rng, 45, 0.45, 5, 250)}.\n#### {rng.randrange(1000)}",
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_mmlu(root: Path, questions: int, rng: random.Random) -> None:
    # Five dev exemplars per subject: cl_mmlu is 5-shot from the doc's own subject.
    _write_jsonl(root / "mmlu" / "dev.jsonl", [_mmlu_row(rng, s) for s in MMLU_SUBJECTS for _ in range(5)])
    test = [_mmlu_row(rng, MMLU_SUBJECTS[i % len(MMLU_SUBJECTS)]) for i in range(questions)]
    _write_jsonl(root / "mmlu" / "test.jsonl", test)


def write_gsm8k(root: Path, questions: int, rng: random.Random) -> None:
    # cl_gsm8k takes the first four train rows as shots.
    _write_jsonl(root / "gsm8k" / "train.jsonl", [_gsm8k_row(rng) for _ in range(8)])
    _write_jsonl(root / "gsm8k" / "test.jsonl", [_gsm8k_row(rng) for _ in range(questions)])


@dataclass(frozen=True)
class BenchTask:
    kind: str  # "loglikelihood" or "generation"
    write: Callable[[Path, int, random.Random], None]


TASKS = {
    "cl_mmlu": BenchTask("loglikelihood", write_mmlu),
    "cl_gsm8k": BenchTask("generation", write_gsm8k),
}


def write_data_dir(root: str | Path, tasks: list[str], questions: int, seed: int = 0) -> Path:
    """A data dir holding `questions` synthetic test questions for each of `tasks` (keys of TASKS)."""
    root = Path(root)
    for name in tasks:
        TASKS[name].write(root, questions, random.Random(f"{seed}-{name}"))
    return root


def produced_tokens(new: torch.Tensor, eos_ids: list[int]) -> int:
    """Tokens `generate` produced per row of `new` (its output after the prompt): up to and including the
    first EOS, after which a finished row only holds padding; a row without EOS counts in full."""
    if new.numel() == 0:
        return 0
    is_eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, new.shape[1])
    return int(first.sum())


def _eos_ids(model: torch.nn.Module) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


@contextmanager
def counting_generated_tokens(model: torch.nn.Module) -> Iterator[dict]:
    """Counts the tokens `model.generate` produces while inside: lm-eval returns only the decoded text,
    cut at the stop strings, so the count is taken from generate's output tensor. The wrapper is set on
    this instance only and removed on exit."""
    counts = {"tokens": 0, "calls": 0}
    generate, eos = model.generate, _eos_ids(model)

    def counted(*args, **kwargs):
        out = generate(*args, **kwargs)
        prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        counts["tokens"] += produced_tokens(out[:, prompt.shape[1] :], eos)
        counts["calls"] += 1
        return out

    model.generate = counted
    try:
        yield counts
    finally:
        del model.generate  # the class's method shows through again


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(
    model: torch.nn.Module,
    tokenizer,
    task: str,
    data_dir: str | Path,
    questions: int,
    batch_size: int = 8,
    max_gen_tokens: int | None = None,
    warmup: int = 2,
) -> dict:
    """Time one `evaluate` call of `task` over the data dir's `questions` questions, after an untimed
    warm-up call on `warmup` of them; questions/s and, for generation, produced tokens/s."""
    kwargs = {"batch_size": batch_size, "max_gen_tokens": max_gen_tokens}
    if warmup:
        evaluate(model, tokenizer, [task], data_dir, limit=min(warmup, questions), **kwargs)
    with counting_generated_tokens(model) as generated:
        _sync()
        start = time.perf_counter()
        results = evaluate(model, tokenizer, [task], data_dir, **kwargs)
        _sync()
        seconds = time.perf_counter() - start
    scored = results["n_samples"][task]
    if scored != questions:
        raise RuntimeError(f"{task}: evaluate scored {scored} questions, the data dir holds {questions}")
    generation = TASKS[task].kind == "generation"
    return {
        "task": task,
        "kind": TASKS[task].kind,
        "questions": scored,
        "seconds": seconds,
        "questions_per_s": scored / seconds,
        "gen_tokens": generated["tokens"] if generation else None,
        "gen_tokens_per_s": generated["tokens"] / seconds if generation else None,
        "generate_calls": generated["calls"],
        "batch_size": batch_size,
        "max_gen_tokens": max_gen_tokens if generation else None,
    }
