"""`launch/bench.py eval`: throughput of the in-training eval hook (`eval_hooks.runner.evaluate`) on a shape
preset with random weights, over a synthetic data dir of `--questions` questions per task.

One markdown row per task: questions/s for the log-likelihood task (cl_mmlu), and generated tokens/s for
the generation task (cl_gsm8k). Runs on one device: the GPU when there is one (bf16), else the CPU (fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from train.benchmark import markdown
from train.config import ModelConfig
from train.errors import UserError

COLUMNS = (
    "task",
    "shape",
    "dtype",
    "questions",
    "seconds",
    "questions_per_s",
    "gen_tokens",
    "gen_tokens_per_s",
    "batch_size",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from eval_hooks.benchmark import TASKS

    p = argparse.ArgumentParser(prog="launch/bench.py eval", description=__doc__)
    p.add_argument("--shape", default="llama3_tiny", help="model preset (train/model.py PRESETS)")
    p.add_argument("--questions", type=int, default=200, help="synthetic test questions per task, all timed")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="one row each")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (the hook's default: 8)")
    p.add_argument(
        "--max-gen-tokens", type=int, default=256, help="generation cap (evaluate's max_gen_tokens)"
    )
    p.add_argument("--warmup", type=int, default=2, help="questions of the untimed warm-up call per task")
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--tokenizer", help="tokenizer folder or hub id (default: the bundled tiny one; weights are random)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the synthetic questions")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.questions < 1 or args.batch_size < 1 or args.max_gen_tokens < 1 or args.warmup < 0:
        p.error("--questions, --batch-size and --max-gen-tokens must be >= 1 and --warmup >= 0")
    return args


def build(shape: str, dtype: str, tokenizer: str | None, device: torch.device, seed: int):
    """A random-weight model of the preset on `device`, in eval mode, and a tokenizer its vocab covers."""
    from train.model import TINY_TOKENIZER, build_model, build_tokenizer

    cfg = ModelConfig(preset=shape, dtype=dtype, tokenizer=tokenizer or str(TINY_TOKENIZER))
    tok = build_tokenizer(cfg)
    torch.manual_seed(seed)
    with device:  # initialise on the device: an 8B random init on the CPU takes minutes
        model = build_model(cfg)
    if len(tok) > model.config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tok)} tokens but {shape} embeds only {model.config.vocab_size}: "
            "use a tokenizer whose vocabulary the preset covers"
        )
    return model.eval(), tok


def main(argv: list[str]) -> int:
    from eval_hooks.benchmark import measure, write_data_dir
    from train.errors import USER_ERRORS
    from train.loop import setup_logging

    args = parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("continualm: error: launch/bench.py eval runs on one device; start it with plain python")
        return 2
    setup_logging()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    try:
        model, tokenizer = build(args.shape, dtype, args.tokenizer, device, args.seed)
    except USER_ERRORS as e:
        print(f"continualm: error: {e}", flush=True)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="continualm-evalbench-") as tmp:
        data_dir = write_data_dir(tmp, args.tasks, args.questions, args.seed)
        for task in args.tasks:
            row = measure(
                model,
                tokenizer,
                task,
                data_dir,
                args.questions,
                batch_size=args.batch_size,
                max_gen_tokens=args.max_gen_tokens,
                warmup=args.warmup,
            )
            rows.append({"shape": args.shape, "dtype": dtype, "device": device.type, **row})
            if args.json:  # after every row: a run stopped at its time cap keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=2))
    print(markdown(rows, COLUMNS), flush=True)
    return 0
