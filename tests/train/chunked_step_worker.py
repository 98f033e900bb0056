"""Test helper run under torchrun (2 ranks, ZeRO-3): two optimizer steps with the plain head and with
train.loss_chunk_tokens from the same start; rank 0 saves both runs' losses, first-step gradient norms and
consolidated weights, and the gradient norm of the first step's global batch computed by plain autograd in
one process (the loss normalisation across ranks must give exactly that gradient). Then both ranks check
that they read the same prepared data, before and after rank 1's shard is made to differ."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data_prep.sampler import RowSampler  # noqa: E402
from data_prep.shards import prepare  # noqa: E402
from tests.conftest import SMOKE  # noqa: E402
from train import distributed  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import build_engine  # noqa: E402
from train.errors import UserError  # noqa: E402
from train.loop import check_same_data_on_all_ranks, seed_everything, train_step  # noqa: E402
from train.model import build_for_training, build_tokenizer  # noqa: E402

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
distributed.init()
common = ["tracking=none", f"data.cache_dir={cache}", "deepspeed.zero_stage=3", "optim.eps=1e-4"]
results = {}
cfg = load_config(SMOKE, common)
seed_everything(cfg.seed)
reference = build_for_training(cfg)  # the engines' initial weights, unpartitioned
data = prepare(cfg.data, build_tokenizer(cfg.model))
batch = data.batch(RowSampler(len(data), cfg.seed).rows(0, cfg.rows_per_step))
logits = reference(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
targets = batch["labels"][:, 1:]
loss = (
    F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum")
    / (targets != -100).sum()
)
loss.backward()
results["reference_grad_norm"] = torch.nn.utils.get_total_norm(
    [p.grad for p in reference.parameters()]
).item()
for name, extra in (("plain", []), ("chunked", ["train.loss_chunk_tokens=100"])):
    cfg = load_config(SMOKE, common + extra)
    seed_everything(cfg.seed)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    engine = build_engine(cfg, build_for_training(cfg), distributed.world_size(), cfg.total_steps())
    engine.train()
    sampler, n = RowSampler(len(data), cfg.seed), cfg.rows_per_step
    steps = [train_step(engine, data, sampler.rows(k * n, n), cfg) for k in range(2)]
    losses = [m["loss"] for m in steps]
    full = engine._zero3_consolidated_16bit_state_dict()  # collective; the dict on rank 0 only
    weights = {k: v.clone() for k, v in full.items()} if full is not None else None
    results[name] = {"losses": losses, "grad_norm": steps[0]["grad_norm"], "weights": weights}
    engine.destroy()

# A rank whose shard differs (a node-local cache built from other inputs) is refused on every rank alike.
results["same_data"] = check_same_data_on_all_ranks(data)
if distributed.rank() == 1:
    manifest = data.shards[0].manifest
    data.shards[0].manifest = {**manifest, "tokens_in_rows": manifest["tokens_in_rows"] + 1}
try:
    check_same_data_on_all_ranks(data)
    results["different_data"] = "accepted"
except UserError as e:
    results["different_data"] = str(e)
if distributed.is_main():
    torch.save(results, out)
distributed.shutdown()
