"""`launch/bench.py train`: our real training step (config -> model -> engine -> train_step) on synthetic
in-memory data, timed after warm-up, optionally side by side with HF Trainer + DeepSpeed (`--peer`).

One markdown row per configuration: tokens/s, non-pad tokens/s, MFU, peak memory, step time. Runs on CPU
(one gloo rank) as on GPU; on CPU MFU is not reported and memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from train import distributed as dist
from train.config import RunConfig
from train.peer import PEERS

log = logging.getLogger(__name__)

EXPANSION = re.compile(r"(concat|stack|hybrid|partial)(\d+)(?:_(lerp|dlerp|dlerpin))?")
COLUMNS = (
    "impl",
    "shape",
    "variant",
    "data",
    "seq",
    "micro_batch",
    "zero",
    "dtype",
    "steps",
    "step_s",
    "tokens_per_s",
    "real_tokens_per_s",
    "mfu",
    "peak_mem_gb",
    "vs_ours",
    "cost_vs_full",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/bench.py train", description=__doc__)
    p.add_argument("--shape", default="llama3_tiny", help="model preset (train/model.py PRESETS)")
    p.add_argument("--seq", type=int, required=True, help="sequence length of a packed row")
    p.add_argument("--zero", type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument("--micro-batch", type=int, default=1, help="rows per micro-batch (the peer: samples)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument(
        "--grad-accum-dtype",
        default="fp32",
        choices=("fp32", "bf16"),
        help="deepspeed.grad_accum_dtype under bf16 (the peer gets the same)",
    )
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument(
        "--expansion",
        nargs="+",
        default=["none"],
        metavar="V",
        help="variants, one row each: none (full tuning), lora (r 8, q/v), concat16, concat16_dlerp, stack16, ...",
    )
    p.add_argument("--data", default="full", choices=("full", "sft", "cpt"))
    p.add_argument("--peer", nargs="*", default=[], choices=PEERS, help="HF Trainer peers to run")
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "flash_attention_2", "flex_attention", "eager"))
    p.add_argument("--liger", action="store_true", help="model.liger (and the peer's use_liger_kernel)")
    p.add_argument(
        "--peer-liger", action="store_true", help="the peer's use_liger_kernel only (its best flags)"
    )
    p.add_argument("--fused-adam", action="store_true", help="optim.fused (the peer: adamw_torch_fused)")
    p.add_argument("--compile", action="store_true", help="train.compile (the peer: torch_compile)")
    p.add_argument(
        "--activation-checkpointing",
        nargs="?",
        const="full",
        default="none",
        choices=("none", "full", "selective"),
        help="model.activation_checkpointing (bare flag: full; the peer: its activation_checkpointing)",
    )
    p.add_argument(
        "--loss-chunk",
        type=int,
        metavar="T",
        help="train.loss_chunk_tokens: lm_head + loss T tokens at a time",
    )
    p.add_argument("--no-overlap-comm", action="store_true", help="deepspeed.overlap_comm: false")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO optimizer offload (cpu_adam)")
    p.add_argument("--peak-tflops", type=float, help="per-device peak for MFU (detected for known GPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1 or args.grad_accum < 1 or args.seq < 2:
        p.error("--steps, --micro-batch, --grad-accum must be >= 1, --warmup >= 0 and --seq >= 2")
    if args.peer_liger and (not args.peer or importlib.util.find_spec("liger_kernel") is None):
        p.error("--peer-liger needs --peer and the liger-kernel package (a CUDA GPU)")
    if args.peer and (args.liger or args.peer_liger) and len(args.expansion) > 1:
        # the Trainer applies Liger by patching transformers' Llama classes for the whole process
        p.error("a Liger peer patches every later model: give one --expansion variant per invocation")
    # what the peer cannot do the same way would make the comparison unfair
    if args.peer and args.offload_optimizer:
        p.error(
            "--offload-optimizer is not passed to the peer (HF Trainer builds its own optimizer): drop --peer"
        )
    if args.peer and any(v.startswith(("concat", "hybrid")) for v in args.expansion):
        p.error("--peer has no Control-LLM divergence loss: run concat / hybrid variants without --peer")
    if "hf_flat" in args.peer and args.data == "cpt":
        p.error(
            "--peer hf_flat renumbers positions per packed row, joining CPT documents: use --data sft or full"
        )
    for v in args.expansion:
        if v not in ("none", "lora") and not EXPANSION.fullmatch(v):
            p.error(
                f"--expansion {v!r}: use none, lora or <concat|stack|hybrid|partial><N>[_<lerp|dlerp|dlerpin>]"
            )
    return args


def run_config(args: argparse.Namespace, variant: str, out_dir: str) -> RunConfig:
    """The RunConfig of one benchmarked variant; data.sources only names the synthetic data (never read)."""
    dtype = args.dtype or ("bf16" if torch.cuda.is_available() else "fp32")
    data = {
        "model": {
            "preset": args.shape,
            "dtype": dtype,
            "attn_implementation": args.attn,
            "activation_checkpointing": args.activation_checkpointing,
            "liger": args.liger,
        },
        "output_dir": out_dir,
        "seed": args.seed,
        "data": {"sources": [{"path": f"synthetic-{args.data}"}], "seq_len": args.seq},
        "train": {
            "micro_batch_size": args.micro_batch,
            "grad_accum_steps": args.grad_accum,
            "max_steps": args.warmup + args.steps,
            "compile": args.compile,
            "loss_chunk_tokens": args.loss_chunk,
            "peak_tflops": args.peak_tflops,
        },
        "optim": {
            "name": "cpu_adam" if args.offload_optimizer else "adamw_torch",
            "lr": 1e-5,
            "fused": args.fused_adam,
        },
        "schedule": {"name": "constant"},
        "deepspeed": {
            "zero_stage": args.zero,
            "overlap_comm": not args.no_overlap_comm,
            "offload_optimizer": args.offload_optimizer,
            **({"grad_accum_dtype": args.grad_accum_dtype} if dtype == "bf16" else {}),
        },
        "tracking": {"backend": "none"},
    }
    if variant == "lora":
        data["peft"] = {"r": 8, "alpha": 32, "target_modules": ["q_proj", "v_proj"]}
    elif variant != "none":
        kind, n, method = EXPANSION.fullmatch(variant).groups()
        data["expansion"] = {"type": kind, "num_exp_layers": int(n), "method": method or "lerp"}
    from train.config import validate

    return validate(data, source=f"benchmark variant {variant}")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_ours(cfg: RunConfig, rows, model, steps: int, warmup: int) -> tuple[list[float], list[list[tuple]]]:
    """Time `steps` optimizer steps of train_step after `warmup`; returns step seconds and batch shapes."""
    from data_prep.sampler import RowSampler
    from train.engine import build_engine
    from train.loop import train_step

    engine = build_engine(cfg, model, dist.world_size(), cfg.total_steps())
    engine.train()
    sampler = RowSampler(len(rows), cfg.seed)
    per_step = cfg.rows_per_step
    times, shapes = [], []
    for step in range(warmup + steps):
        ids = sampler.rows(step * per_step, per_step)
        _sync()
        t0 = time.perf_counter()
        train_step(engine, rows, ids, cfg)
        _sync()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            shapes.append([(len(ids) * cfg.data.seq_len, cfg.data.seq_len, rows.real_tokens(ids))])
    engine.destroy()
    return times, shapes


def summarise(times: list[float], shapes: list[list[tuple]], flops, peak: float | None) -> dict:
    """Throughput over the timed steps; `shapes` holds each step's (tokens, row length, non-pad tokens)."""
    from train.loop import peak_memory_gb

    seconds = sum(times)
    tokens = sum(n for step in shapes for n, _, _ in step)
    real = sum(r for step in shapes for _, _, r in step)
    step_flops = sum(n * flops(t) for step in shapes for n, t, _ in step)
    world = dist.world_size()
    return {
        "steps": len(times),
        "step_s": seconds / len(times),
        "tokens_per_s": tokens / seconds,
        "real_tokens_per_s": real / seconds,
        "mfu": step_flops / seconds / (peak * 1e12 * world) if peak else None,
        "peak_mem_gb": peak_memory_gb(),
        "flops_per_step": step_flops / len(times),
        "tokens": tokens,
        "real_tokens": real,
    }


def _timed_steps(shapes: list[tuple], accum: int, warmup: int, steps: int) -> list[list[tuple]]:
    """The peer's recorded micro-batches grouped by optimizer step, timed steps only (the data loader may
    have collated one batch ahead). Tokens are rank 0's times the ranks (the peer's batches are local)."""
    world = dist.world_size()
    shapes = [(n * world, t, real * world) for n, t, real in shapes]
    grouped = [shapes[i : i + accum] for i in range(0, len(shapes), accum)]
    return grouped[warmup : warmup + steps]


def _build(cfg: RunConfig):
    from train.model import build_for_training

    _reset_memory()  # the previous variant's engine holds reference cycles: free it before the next model
    with torch.device(dist.device()):  # random init on the GPU: an 8B one on the CPU takes minutes
        return build_for_training(cfg)


def bench_variant(args, variant: str, out_dir: Path) -> Iterator[dict]:
    """Our row, then one per peer (a peer that fails gets a row with its `error`, and the others still run)."""
    from train.loop import seed_everything
    from train.model import flops_per_token, peak_tflops
    from train.peer import run_peer
    from train.synthetic import make_rows

    cfg = run_config(args, variant, str(out_dir))
    peak = cfg.train.peak_tflops or peak_tflops(cfg.model.dtype)
    total = args.warmup + args.steps
    world = dist.world_size()
    seed_everything(cfg.seed)
    model = _build(cfg)
    rows = make_rows(
        args.data, total * args.micro_batch * args.grad_accum * world, args.seq, model.config, args.seed
    )
    # FLOPs per token are linear in the row length t: keep the line, not the model
    at_zero = flops_per_token(model, 0)
    per_t = flops_per_token(model, 1) - at_zero

    def flops(t: int) -> float:
        return at_zero + per_t * t

    common = {
        "shape": args.shape,
        "variant": variant,
        "data": args.data,
        "seq": args.seq,
        "zero": args.zero,
        "dtype": cfg.model.dtype,
        "flops_per_token": flops(args.seq),
    }
    _reset_memory()
    times, shapes = run_ours(cfg, rows, model, args.steps, args.warmup)
    ours = {
        "impl": "continualm",
        "micro_batch": args.micro_batch,
        **common,
        **summarise(times, shapes, flops, peak),
    }
    yield ours
    del model
    # The peer builds the same model without our switches and turns on its own equivalents instead.
    peer_cfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"liger": False, "activation_checkpointing": "none"}),
            "train": cfg.train.model_copy(update={"compile": False, "loss_chunk_tokens": None}),
        }
    )
    for peer in args.peer:
        seed_everything(cfg.seed)
        model = _build(peer_cfg)
        micro = args.micro_batch
        if peer == "hf_flat" and args.data == "sft":
            # as many samples per flattened row as our packed micro-batch holds on average
            mean_len = sum(len(s[0]) for s in rows.samples) / len(rows.samples)
            micro = max(1, round(args.micro_batch * rows.real.mean() / mean_len))
        _reset_memory()
        liger = args.liger or args.peer_liger
        try:
            times, recorded = run_peer(peer, model, cfg, liger, rows, args.data, micro, total, out_dir / peer)
        except Exception as e:  # noqa: BLE001  (e.g. out of memory: the next peer may still fit)
            log.exception("peer %s failed", peer)
            yield {"impl": peer, "micro_batch": micro, **common, "error": f"{type(e).__name__}: {e}"[:300]}
            del model
            continue
        shapes = _timed_steps(recorded, args.grad_accum, args.warmup, args.steps)
        if peer == "hf_flat":  # one flattened row per micro-batch: count attention at our row length
            shapes = [[(n, args.seq, real) for n, _, real in step] for step in shapes]
        row = {
            "impl": peer,
            "micro_batch": micro,
            **common,
            **summarise(times[args.warmup :], shapes, flops, peak),
        }
        row["vs_ours"] = ours["real_tokens_per_s"] / row["real_tokens_per_s"]
        yield row
        del model


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    lines += [f"\n{r['impl']} ({r.get('variant')}) failed: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines)


def _with_cost_vs_full(rows: list[dict]) -> list[dict]:
    """Step cost per token of each variant relative to full tuning of the same shape (Control-LLM's 1.25x)."""
    plain = next((r for r in rows if r["impl"] == "continualm" and r["variant"] == "none"), None)
    for r in rows:
        if plain is not None and r["impl"] == "continualm" and r is not plain:
            r["cost_vs_full"] = plain["tokens_per_s"] / r["tokens_per_s"]
    return rows


def main(argv: list[str]) -> int:
    from train.errors import USER_ERRORS
    from train.loop import setup_logging

    args = parse_args(argv)
    dist.init()
    setup_logging()
    rows: list[dict] = []
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="continualm-bench-") as tmp:
            for variant in args.expansion:
                for row in bench_variant(args, variant, Path(tmp) / variant):
                    rows.append(row)
                    if args.json and dist.is_main():  # rows measured so far survive a later crash or kill
                        Path(args.json).write_text(json.dumps(_with_cost_vs_full(rows), indent=2))
    except USER_ERRORS as e:
        print(f"continualm: error: {e}", flush=True)
        return 2
    except Exception:  # noqa: BLE001  (e.g. out of memory in a later variant: report what was measured)
        log.exception("benchmark stopped")
        status = 1
    if dist.is_main():
        print(markdown(_with_cost_vs_full(rows)), flush=True)
    return status
