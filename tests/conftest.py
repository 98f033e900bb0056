"""Shared helpers: run our entry points in subprocesses the way users do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke" / "cpt_tiny.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict | None = None) -> dict:
    """The environment for a launched process; a None value in `extra` removes a variable."""
    env = {**os.environ, "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false"}
    # an in-process test may have joined a world of one; children must not inherit its rendezvous
    for var in (
        "CONTINUALM_FAULT",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        env.pop(var, None)
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


def run_entry(
    script: str,
    *args: str,
    nproc: int = 1,
    launcher: str = "torchrun",
    env: dict | None = None,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Run launch/<script> with 1 process (plain python) or `nproc` ranks (torchrun or deepspeed).

    `env` adds variables; a value of None removes one."""
    path = str(ROOT / "launch" / script)
    if nproc == 1 and launcher == "torchrun":
        cmd = [sys.executable, path, *args]
    elif launcher == "torchrun":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
            path,
            *args,
        ]
    else:
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), path, *args]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenized-data cache for the whole session (the data is the same in most runs)."""
    return tmp_path_factory.mktemp("data_cache")


def torchrun_helper(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a test helper script (path relative to the repo) on 2 ranks under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)


def engine_logits(checkpoint: Path, out: Path) -> dict:
    """Logits of a fresh 2-rank DeepSpeed engine loaded from `checkpoint` on a fixed batch."""
    r = torchrun_helper("tests/train/engine_logits.py", str(checkpoint), str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import torch

    return torch.load(out)


def bench_main(monkeypatch, *args: str) -> int:
    """launch/bench.py's main() in this process (one rank), as `python launch/bench.py ARGS` runs it."""
    import importlib.util

    import train  # noqa: F401  (the package, before launch/ and its train.py go on sys.path)

    spec = importlib.util.spec_from_file_location("launch_bench", ROOT / "launch" / "bench.py")
    monkeypatch.syspath_prepend(str(ROOT / "launch"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(list(args))


# Prepended to `python -I -c` scripts: makes our packages unimportable even when an editable install
# puts them on every path, so the script sees what a machine without continualm sees.
WITHOUT_CONTINUALM = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("train", "data_prep", "eval_hooks"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _Blocked())
"""


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip cleanly without CUDA (e.g. `pytest -m gpu` on a CPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
