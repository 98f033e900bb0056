"""Run our lm-eval suites on a model in this process, on every rank of a torch.distributed job or alone."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import random
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from eval_hooks import TASKS_DIR, lockstep, scoreboard, task_metrics

log = logging.getLogger(__name__)

SUITE_CARDS = {
    "control_llm_zh": "control_llm",
    "control_llm_zh_meta": "control_llm_meta",  # its own board: both suites in one run keep both
    "swallow_ja": "swallow_ja",
    "swallow_en": "swallow_en",
    "mera": "mera",
}


@contextmanager
def _preserved_state(model: torch.nn.Module):
    """lm-eval reseeds the global RNGs and puts the model in eval mode; give training its state back."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        model.train(was_training)


@contextmanager
def _no_env_report():
    """lm-eval adds torch's environment report to every result (pip list, nvidia-smi: ~2 s, on rank 0 while
    the other ranks wait); our results record the model and data instead, so it is skipped for our calls."""
    import lm_eval.evaluator

    report = lm_eval.evaluator.add_env_info
    lm_eval.evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info = report


def task_manager(data_dir: str | Path):
    """A TaskManager over our task YAMLs only (built-ins skipped: indexing them costs ~30 s on CPU)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"data_dir": str(Path(data_dir).resolve())},
    )


def _check_names(names: list[str], known: list[str]) -> None:
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown suite or task {name!r}.{hint} Known suites: {sorted(SUITE_CARDS)}")


def suite_tasks(tm, names: list[str]) -> list[str]:
    """The tasks of `names`, suites expanded, each once in first-seen order. lm-eval refuses two groups sharing a
    task (control_llm_zh and swallow_en share MMLU and BBH); the cards are built from per-task results anyway."""
    from lm_eval.tasks._index import Kind

    out: dict[str, None] = {}

    def add(name: str) -> None:
        entry = tm.task_index[name]
        if entry.kind is not Kind.GROUP:
            out[name] = None
            return
        for child in entry.cfg["task"]:
            if not isinstance(child, str):
                raise TypeError(f"suite {name!r}: list its tasks by name, got {child!r}")
            add(child)

    for name in names:
        add(name)
    return list(out)


def load_tasks(tm, names: list[str], max_gen_tokens: int | None = None, default_gen_toks: int = 256) -> dict:
    """{task: lm-eval Task} for suites or tasks; `max_gen_tokens` lowers each generation task's own cap (a task
    without one has the model's `default_gen_toks`) and never raises it."""
    tasks = tm.load(suite_tasks(tm, names))["tasks"]
    if max_gen_tokens is None:
        return tasks
    for task in tasks.values():
        if task.get_config("output_type") != "generate_until":
            continue
        kwargs = task.get_config("generation_kwargs")
        cap = min(int((kwargs or {}).get("max_gen_toks", default_gen_toks)), max_gen_tokens)
        if kwargs is None:
            task.set_config("generation_kwargs", {"max_gen_toks": cap})
        else:
            task.set_config("generation_kwargs", {"max_gen_toks": cap}, update=True)
    return tasks


def _check_docs_per_rank(tasks: dict, limit: int | None, world: int) -> None:
    # A rank without docs skips a request type entirely and the ranks fall out of step (a hang).
    few = {}
    for name, task in tasks.items():
        n = len(task.eval_docs)
        if min(n, limit or n) < world:
            few[name] = min(n, limit or n)
    if few:
        raise ValueError(
            f"every rank needs at least one doc of each task, but with {world} ranks these have fewer "
            f"(limit={limit} applied): {few}; add rows, raise the limit or evaluate on fewer ranks"
        )


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    suites: list[str],
    data_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    max_gen_tokens: int | None = None,
) -> dict | None:
    """Score `model` on suites (or single tasks) from local data; call on every rank when distributed.

    Rank 0 gets {"tasks", "n_samples", "aggregates"}; other ranks get None. RNG state and train mode
    are restored on return."""
    import lm_eval

    HFLM, DistributedHFLM = lockstep.hflm_classes()
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with (
        _preserved_state(model),
        task_metrics.model_tokenizer(tokenizer),
        _no_env_report(),
        lockstep.in_step() if distributed else nullcontext(),
    ):
        tm = task_manager(data_dir)
        _check_names(suites, tm.all_tasks)
        if distributed:
            lm = DistributedHFLM(model, tokenizer, batch_size)
        else:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        tasks = load_tasks(tm, suites, max_gen_tokens, lm.max_gen_toks)
        if distributed:
            _check_docs_per_rank(tasks, limit, dist.get_world_size())
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks.values()),
            task_manager=tm,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
            confirm_run_unsafe_code=True,  # code tasks run only through eval_hooks.sandbox
        )
    if out is None:  # non-zero ranks
        return None
    return summarize(out, suites)


def summarize(out: dict, suites: list[str]) -> dict:
    """Per-task metrics (stderr dropped), sample counts (scored, and in the data: more under a `limit`) and the
    cards' boards of lm-eval's output."""
    # A metric without items (a ruEthics question that no doc under `limit` asked) aggregates to None: dropped.
    tasks = {
        name: {k: v for k, v in metrics.items() if "," in k and "_stderr," not in k and v is not None}
        for name, metrics in out["results"].items()
        if name in out.get("n-samples", {})
    }
    n_samples = {name: counts["effective"] for name, counts in out["n-samples"].items()}
    n_available = {name: counts["original"] for name, counts in out["n-samples"].items()}
    aggregates = {}
    for suite in suites:
        if suite in SUITE_CARDS:
            card = SUITE_CARDS[suite]
            columns = scoreboard.columns_from_results(card, tasks)
            questions = scoreboard.questions_from_results(card, n_samples, n_available)
            aggregates[card] = scoreboard.score(card, columns, questions)
    return {
        "suites": suites,
        "tasks": tasks,
        "n_samples": n_samples,
        "n_available": n_available,
        "aggregates": aggregates,
    }


def model_fingerprint(model: torch.nn.Module) -> dict:
    """Name and a hash of the model config (weights may be partitioned, so they are not hashed)."""
    config = model.config
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:16]
    return {"name_or_path": getattr(config, "_name_or_path", ""), "config_sha256": digest}


def data_fingerprint(data_dir: str | Path) -> str:
    """sha256 over the relative paths and contents of every file under the data dir."""
    root = Path(data_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def write_results(
    path: str | Path,
    results: dict,
    model: torch.nn.Module,
    data_dir: str | Path,
    step: int | None = None,
    config_hash: str | None = None,
) -> Path:
    """Write the eval-result JSON (per-task metrics, counts, aggregates, fingerprints, step, config hash)."""
    record = {
        **results,
        "model": model_fingerprint(model),
        "data_sha256": data_fingerprint(data_dir),
        "step": step,
        "config_hash": config_hash,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=float))
    os.replace(tmp, path)  # readers never see a half-written file
    return path


def load_model(model_dir: str | Path, dtype: torch.dtype, device: torch.device | str):
    """An HF folder's model in eval mode; damaged weights are an error naming the folder."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    except SafetensorError as e:  # a truncated or damaged weights file: say which folder, not a traceback
        raise ValueError(f"cannot load the model weights in {model_dir}: {e}") from e


def evaluate_hf_dir(
    model_dir: str | Path,
    suites: list[str],
    data_dir: str | Path,
    out: str | Path,
    limit: int | None = None,
    batch_size: int = 8,
    max_gen_tokens: int | None = None,
) -> dict | None:
    """Standalone run on an exported HF folder; data parallel when started by torchrun/deepspeed/accelerate."""
    from transformers import AutoTokenizer

    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = load_model(model_dir, dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    results = evaluate(model, tokenizer, suites, data_dir, limit, batch_size, max_gen_tokens)
    if results is not None:
        write_results(out, results, model, data_dir)
    return results


def scalars(results: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat {"eval/<task>/<metric>": v, "eval/<card>/<aggregate>": v} for wandb or any scalar logger; an aggregate
    built from partial columns (fewer questions than the card's, or a `limit`) is logged as "<aggregate>_partial",
    so it never extends the series of the card-comparable one."""
    flat = {
        f"{prefix}/{task}/{metric.replace(',', '/')}": float(value)
        for task, metrics in results["tasks"].items()
        for metric, value in metrics.items()
    }
    for card, board in results["aggregates"].items():
        for name, value in board["aggregates"].items():
            if value is not None:
                flat[f"{prefix}/{card}/{name}" + ("_partial" if name in board["partial"] else "")] = value
    return flat
