"""Data preparation throughput: our `prepare` path against a plain `datasets.map` baseline, in one run.

`python launch/bench.py data [--tokens N] [--num-proc P] [--seq-len L] [--tokenizer PATH]`

Both paths read the same generated multilingual jsonl corpus (zh, ja, en sentences from the shipped
samples and generated code, with web-like lognormal document lengths) and end with packed token rows:
- ours: `data_prep.shards.prepare`, the code `launch/prepare_data.py` and training run, into token shards;
- baseline: `datasets.load_dataset('json')` + `.map(batched=True)` with the fast tokenizer + the classic
  group-texts concatenation into `seq_len` blocks (transformers' run_clm recipe).
Each process runs the tokenizer on one thread (TOKENIZERS_PARALLELISM=false). Per core is reported two
ways: tokens/s divided by the P worker processes, and tokens per CPU-second (user + system time of this
process and its finished children, i.e. every core the path used, its main process included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from data_prep.tiny_tokenizer import OUT_DIR as TINY_TOKENIZER
from data_prep.tiny_tokenizer import SAMPLE_TEXT

LANG_SHARES = {"zh": 0.3, "ja": 0.2, "en": 0.35, "code": 0.15}
CODE_WORDS = "data rows index value total count name batch token shard items result buffer offset".split()


def _sentences() -> dict[str, list[str]]:
    """Sentences of the shipped multilingual sample, by language."""
    pools: dict[str, list[str]] = {}
    for line in SAMPLE_TEXT.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        split = r"(?<=[。！？])" if row["lang"] in ("zh", "ja") else r"(?<=[.!?]) "
        pools.setdefault(row["lang"], []).extend(s for s in re.split(split, row["text"]) if s)
    return pools


def _code_line(rng: np.random.Generator) -> str:
    a, b = rng.choice(CODE_WORDS, 2)
    n = int(rng.integers(0, 1000))
    return rng.choice(
        [
            f"def {a}_{b}({a}, {b}={n}):\n",
            f"    {a} = {b}[{n}] + len({a})\n",
            f"    for {a} in range({n}):\n        {b}.append({a} * {n})\n",
            f"    return {{'{a}': {b}, 'n': {n}}}\n",
            f"# {a} {b} {n}\n",
        ]
    )


def generate_corpus(path: Path, chars: int, seed: int = 0) -> int:
    """Write about `chars` characters of jsonl documents to `path`; returns the number of documents."""
    rng = np.random.default_rng(seed)
    pools = _sentences()
    langs = list(LANG_SHARES)
    shares = np.array(list(LANG_SHARES.values()))
    written = docs = 0
    with path.open("w", encoding="utf-8") as f:
        while written < chars:
            lang = langs[rng.choice(len(langs), p=shares)]
            length = int(np.clip(rng.lognormal(7.0, 1.0), 50, 60_000))  # median ~1,100 characters
            parts, size = [], 0
            while size < length:
                if lang == "code":
                    part = _code_line(rng)
                else:
                    pool = pools[lang]
                    part = pool[rng.integers(len(pool))]
                    if rng.random() < 0.1:
                        part += f" {rng.integers(1, 10_000)}" + ("\n\n" if rng.random() < 0.5 else "")
                    elif lang == "en":
                        part += " "
                parts.append(part)
                size += len(part)
            text = "".join(parts)
            f.write(json.dumps({"text": text, "lang": lang}, ensure_ascii=False) + "\n")
            written += len(text)
            docs += 1
    return docs


def run_ours(corpus: Path, tokenizer, seq_len: int, num_proc: int, cache: Path) -> dict:
    from data_prep.shards import prepare

    # prepare takes any object with the data settings; the others keep their defaults (data_prep must
    # not import train/, where the recipe's DataConfig lives)
    source = SimpleNamespace(path=str(corpus), adapter="text")
    cfg = SimpleNamespace(sources=[source], seq_len=seq_len, cache_dir=str(cache), num_proc=num_proc)
    data, timing = _timed(prepare, cfg, tokenizer)
    m = data.shards[0].manifest
    text_tokens = m["tokens"] - 2 * (m["documents"] - m["empty_documents"])  # minus BOS and EOS
    return {"text_tokens": text_tokens, "rows": m["rows"], **timing}


def run_baseline(corpus: Path, tokenizer, seq_len: int, num_proc: int, cache: Path) -> dict:
    import datasets

    datasets.disable_progress_bars()
    procs = num_proc if num_proc > 1 else None

    def group_texts(batch):  # transformers' run_clm.py recipe: concatenate, cut, drop the remainder
        concatenated = {k: [t for seq in batch[k] for t in seq] for k in batch}
        total = len(concatenated["input_ids"]) // seq_len * seq_len
        out = {k: [v[i : i + seq_len] for i in range(0, total, seq_len)] for k, v in concatenated.items()}
        out["labels"] = out["input_ids"].copy()
        return out

    def run():
        ds = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(cache))
        tokenized = ds.map(
            lambda b: tokenizer(b["text"]), batched=True, num_proc=procs, remove_columns=ds.column_names
        )
        return tokenized, tokenized.map(group_texts, batched=True, num_proc=procs)

    (tokenized, grouped), timing = _timed(run)
    text_tokens = sum(len(ids) - 1 for ids in tokenized["input_ids"])  # minus the BOS the tokenizer adds
    return {"text_tokens": text_tokens, "rows": len(grouped), **timing}


def _timed(fn, *args):
    """fn(*args) and its wall seconds, CPU seconds (user + system of this process and its finished
    children: every core it used) and this process's share of them."""
    usage = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    before, wall = [resource.getrusage(u) for u in usage], time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - wall
    main, children = (
        a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
        for a, b in zip([resource.getrusage(u) for u in usage], before, strict=True)
    )
    return out, {"seconds": seconds, "cpu_seconds": main + children, "main_cpu": main}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.py data", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=10_000_000, help="approximate corpus size in tokens")
    p.add_argument("--num-proc", type=int, default=1, help="processes per path (each one core)")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--tokenizer", default=str(TINY_TOKENIZER), help="tokenizer folder or hub id")
    p.add_argument("--workdir", default=None, help="where the corpus and outputs go (default: a temp folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process, before the tokenizer loads
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="continualm-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    sample = [json.loads(line)["text"] for line in SAMPLE_TEXT.read_text(encoding="utf-8").splitlines()]
    chars_per_token = sum(map(len, sample)) / sum(
        map(len, tokenizer(sample, add_special_tokens=False)["input_ids"])
    )
    docs = generate_corpus(corpus, int(args.tokens * chars_per_token), args.seed)
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus: {corpus} ({docs} documents, {size_mb:.1f} MB); tokenizer {args.tokenizer}")
    print(
        f"machine: {os.cpu_count()} CPUs ({_cpu_model()}); {args.num_proc} process(es) per path, 1 thread each"
    )

    results = {}
    for name, run in (("ours (prepare)", run_ours), ("baseline (datasets.map)", run_baseline)):
        out = work / name.split()[0]
        shutil.rmtree(out, ignore_errors=True)
        results[name] = run(corpus, tokenizer, args.seq_len, args.num_proc, out)
    ours, base = results.values()
    print(
        f"\n| path | seconds | CPU seconds | text tokens | rows of {args.seq_len} | tokens/s "
        f"| tokens/s per process | tokens per CPU-second |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rate = r["text_tokens"] / r["seconds"]
        print(
            f"| {name} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['text_tokens']:,} | {r['rows']:,} "
            f"| {rate:,.0f} | {rate / args.num_proc:,.0f} | {r['text_tokens'] / r['cpu_seconds']:,.0f} |"
        )
    print(
        f"\nours / baseline: {base['seconds'] / ours['seconds']:.2f}x in wall time, "
        f"{base['cpu_seconds'] / ours['cpu_seconds']:.2f}x in CPU time (same corpus, same tokens)"
    )
    if args.num_proc > 1:  # the main process feeds the workers: its rate bounds how far num_proc scales
        main = ours["main_cpu"]
        print(
            f"ours: main process {main:.2f} CPU s (read, pack, write: {ours['text_tokens'] / main:,.0f} tokens/s)"
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0
