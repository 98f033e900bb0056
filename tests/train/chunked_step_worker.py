"""Test helper run under torchrun (2 ranks, ZeRO-3): two optimizer steps with the plain head and with
train.loss_chunk_tokens from the same start; rank 0 saves both runs' losses and consolidated weights."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from data_prep.sampler import RowSampler  # noqa: E402
from data_prep.shards import prepare  # noqa: E402
from tests.conftest import SMOKE  # noqa: E402
from train import distributed  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import build_engine  # noqa: E402
from train.loop import seed_everything, train_step  # noqa: E402
from train.model import build_for_training, build_tokenizer  # noqa: E402

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
distributed.init()
common = ["tracking=none", f"data.cache_dir={cache}", "deepspeed.zero_stage=3", "optim.eps=1e-4"]
results = {}
for name, extra in (("plain", []), ("chunked", ["train.loss_chunk_tokens=100"])):
    cfg = load_config(SMOKE, common + extra)
    seed_everything(cfg.seed)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    engine = build_engine(cfg, build_for_training(cfg), distributed.world_size(), cfg.total_steps())
    engine.train()
    sampler, n = RowSampler(len(data), cfg.seed), cfg.rows_per_step
    losses = [train_step(engine, data, sampler.rows(k * n, n), cfg)["loss"] for k in range(2)]
    full = engine._zero3_consolidated_16bit_state_dict()  # collective; the dict on rank 0 only
    weights = {k: v.clone() for k, v in full.items()} if full is not None else None
    results[name] = {"losses": losses, "weights": weights}
    engine.destroy()
if distributed.is_main():
    torch.save(results, out)
distributed.shutdown()
