"""Run by test_runner under torchrun (2 CPU ranks, gloo): the runner in lockstep as under ZeRO-3."""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from lm_eval.api.instance import Instance
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from eval_hooks.runner import _hflm_class, evaluate

REPO = Path(__file__).resolve().parents[2]


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

    model.register_forward_pre_hook(zero3_like_gather)

    # Unequal request counts and generation lengths per rank, straight through the lockstep layer.
    _, DistributedHFLM = _hflm_class()
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

    results = evaluate(
        model,
        tok,
        ["cl_mmlu", "cl_bbh_cot_3shot"],
        REPO / "tests" / "fixtures" / "eval",
        batch_size=2,
        max_gen_tokens=6,
    )
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"forwards": forwards, "results": results}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main(sys.argv[1])
