"""Run by test_runner under torchrun (2 CPU ranks, gloo): the runner in lockstep as under ZeRO-3, and the
ranks leaving an eval together when one of them fails at different points of it."""

import json
import logging
import os
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import lm_eval.api.task
import lm_eval.evaluator
import torch
import torch.distributed as dist
from lm_eval.api.instance import Instance
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from eval_hooks.lockstep import hflm_classes
from eval_hooks.runner import evaluate
from train import evaluation
from train.config import load_config
from train.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval"


@contextmanager
def failing(owner, name: str, on_ranks: set[int], error: Exception):
    """`owner.name` raises `error` on `on_ranks` (once per rank) while the block runs."""
    original, raised = getattr(owner, name), False

    def call(*args, **kwargs):
        nonlocal raised
        if dist.get_rank() in on_ranks and not raised:
            raised = True
            raise error
        return original(*args, **kwargs)

    setattr(owner, name, call)
    try:
        yield
    finally:
        setattr(owner, name, original)


def outcome(run) -> str:
    try:
        run()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return "ok"


def in_step() -> bool:
    """After an eval the ranks are at the same collective: one all-reduce pairs with the other's."""
    total = torch.tensor([dist.get_rank() + 1])
    dist.all_reduce(total)
    return total.item() == 3


def main(out_dir: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=90))
    rank = dist.get_rank()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )
    model = LlamaForCausalLM(config)
    tok = AutoTokenizer.from_pretrained(REPO / "data_prep" / "assets" / "llama3_tiny_tokenizer")
    forwards = 0

    def zero3_like_gather(module, args):
        # Stand-in for ZeRO-3's per-forward parameter all-gather: unequal forward counts deadlock here.
        nonlocal forwards
        forwards += 1
        dist.all_reduce(torch.ones(1))

    gather_hook = model.register_forward_pre_hook(zero3_like_gather)

    # Unequal request counts and generation lengths per rank, straight through the lockstep layer.
    _, DistributedHFLM = hflm_classes()
    lm = DistributedHFLM(model, tok, batch_size=2)
    n_req, max_toks = (3, 2) if rank == 0 else (1, 7)
    reqs = [
        Instance(
            "generate_until", {}, (f"Q: {i} plus {i}?\nA:", {"until": ["\n\n"], "max_gen_toks": max_toks}), i
        )
        for i in range(n_req)
    ]
    lm.generate_until(reqs)
    ll = [Instance("loglikelihood", {}, ("The sky is", " blue"), i) for i in range(n_req * 3)]
    lm.loglikelihood(ll)

    def score(tasks=("cl_mmlu", "cl_bbh_cot_3shot")):
        return evaluate(model, tok, list(tasks), FIXTURES, batch_size=2, max_gen_tokens=6)

    results = score()
    report = {"forwards": forwards, "results": results}
    gather_hook.remove()  # from here on a forward has no collective inside: a failure in one is survivable

    # A scoring failure on rank 1 inside the in-training hook: both ranks warn, rank 0 records it, both go on.
    cfg = load_config(
        REPO / "configs" / "smoke" / "cpt_tiny.yaml",
        ["tracking=none", f"output_dir={out_dir}/run", "eval.suites=[cl_mmlu]", "eval.every_steps=5"]
        + [f"eval.data_dir={FIXTURES}"],
    )
    Path(cfg.output_dir).mkdir(exist_ok=True)
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("train.evaluation").addHandler(handler)
    scoring = ValueError("injected scoring failure")
    with failing(lm_eval.api.task.ConfigurableTask, "process_results", {1}, scoring):
        hook = outcome(lambda: evaluation.run(SimpleNamespace(module=model), tok, cfg, 5, Tracker(cfg)))
    report["hook"] = {"outcome": hook, "warnings": warnings, "in_step": in_step()}

    # Rank 0 fails after lm-eval's last gather (aggregating): rank 1 learns it in the closing round.
    with failing(lm_eval.evaluator, "_process_results", {0}, KeyError("injected aggregation failure")):
        report["after_gather"] = {"outcome": outcome(score), "in_step": in_step()}

    # Rank 1's forward fails (out of memory, say) while rank 0 goes on to its next model call.
    with failing(model.model, "forward", {1}, RuntimeError("injected forward failure")):
        report["forward"] = {"outcome": outcome(lambda: score(["cl_mmlu"])), "in_step": in_step()}

    # A failure inside generation cannot be rescued (the peers sync every token): OutOfStep, not caught. Both
    # ranks fail at the same point here, so the test can go on.
    with failing(model, "generate", {0, 1}, RuntimeError("injected generation failure")):
        report["generate"] = {"outcome": outcome(lambda: score(["cl_bbh_cot_3shot"])), "in_step": in_step()}

    report["again"] = score()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main(sys.argv[1])
