"""Test helper run under torchrun: load a checkpoint into a fresh DeepSpeed engine and save its
logits on a fixed batch (rank 0), to compare with the exported Hugging Face model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from train import checkpoint, distributed  # noqa: E402
from train.config import validate  # noqa: E402
from train.engine import build_engine  # noqa: E402
from train.model import build_for_training  # noqa: E402

ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
distributed.init()
cfg = validate(checkpoint.check_complete(ckpt)["config"])
engine = build_engine(cfg, build_for_training(cfg), distributed.world_size(), cfg.total_steps())
checkpoint.load(engine, ckpt)
engine.eval()
batch = torch.arange(3, 3 + 2 * 24).reshape(2, 24)
with torch.no_grad():
    logits = engine(input_ids=batch, use_cache=False).logits
if distributed.is_main():
    torch.save({"input_ids": batch, "logits": logits.float()}, out)
distributed.shutdown()
