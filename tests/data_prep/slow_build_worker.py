"""Run by test_writers under torchrun (2 CPU ranks, gloo, a 2 s process-group timeout): rank 0's build takes
longer than that timeout, and rank 1 waits it out (DeepSpeed's timeout is 10 minutes; a corpus takes hours)."""

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace as NS

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch.distributed as dist  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from data_prep import shards  # noqa: E402
from data_prep.tiny_tokenizer import OUT_DIR as TINY_TOKENIZER  # noqa: E402

out = Path(sys.argv[1])
dist.init_process_group("gloo", timeout=timedelta(seconds=2))
build = shards._build


def slow_build(*args, **kwargs):
    time.sleep(5)
    return build(*args, **kwargs)


shards._build = slow_build
corpus = out / "c.jsonl"
data = NS(sources=[NS(path=str(corpus))], seq_len=16, cache_dir=out / "cache")
rows = shards.prepare(data, AutoTokenizer.from_pretrained(TINY_TOKENIZER))
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps(len(rows)))
dist.barrier()
dist.destroy_process_group()
