"""Checkpoints: atomic save, validated resume, pruning, and export to a Hugging Face folder.

Layout under `<output_dir>/checkpoints/`:
  step-00000100/     DeepSpeed shards, rng_rank{r}.pt, trainer_state.json (written last)
  latest             the tag of the last complete checkpoint (DeepSpeed's format)
  step-N.abandoned-<time>, step-N.replaced-<time>   set aside by a resume from an earlier step, never pruned
A save goes to `.tmp-step-...` and is renamed only once every rank has written its files and
the file manifest is in trainer_state.json, so a kill mid-save leaves the previous one intact.
Pruning renames to `.deleting-step-...` first, so a kill mid-delete leaves nothing that looks whole.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.chat import stop_token_ids
from train import distributed as dist
from train.config import RunConfig, accepted_hashes, config_hash, training_diff, validate
from train.errors import UserError
from train.faults import maybe_fault

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
EXPORT_MARKER = "continualm_export.json"
STATE_KEYS = ("step", "consumed_rows", "tokens", "config_hash", "config", "world_size", "files")
TAG_RE = re.compile(r"^step-(\d{8})$")
# What torch.load raises on a file of the right size holding the wrong bytes.
UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError)
SHAPE_MISMATCH = re.compile(r"size mismatch for|must match the size of tensor")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, cfg: RunConfig, step: int, state: dict) -> Path:
    """Save a complete checkpoint of `step` (collective: every rank calls it)."""
    root = Path(cfg.output_dir) / "checkpoints"
    tag = tag_for(step)
    tmp_tag = f".tmp-{tag}"
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / tmp_tag, ignore_errors=True)  # leftover of an interrupted save
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, save_latest=False)
    torch.save(rng_state(), root / tmp_tag / f"rng_rank{dist.rank()}.pt")
    dist.barrier()
    if dist.is_main():
        maybe_fault("kill_in_save", step, dist.rank())
        tmp = root / tmp_tag
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        full_state = dict(
            state,
            step=step,
            config_hash=config_hash(cfg),
            config=cfg.model_dump(mode="json"),
            world_size=dist.world_size(),
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            files=files,
        )
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2))
        _fsync_tree(tmp)
        final = root / tag
        # `latest` first: a kill before the rename leaves it naming no folder, and a resume takes the newest
        # complete one; the other order would leave a complete checkpoint newer than `latest` (read as
        # abandoned: its steps trained again)
        _write_atomic(root / "latest", tag)
        if final.exists():  # a step saved again after a resume from an earlier one: the old one is kept
            kept = root / f"{tag}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(final, kept)
            log.warning(
                "checkpoint %s saved again; the earlier one is kept as %s (delete it if unneeded)", tag, kept
            )
        os.replace(tmp, final)
        _prune(root, step, cfg.checkpoint.keep_last)
        log.info("saved checkpoint %s", final)
    dist.wait_for_main()  # its fsync of every file may take long on network storage
    return root / tag


def _prune(root: Path, step: int, keep_last: int) -> None:
    """Keep the checkpoint of `step` and the keep_last - 1 newest before it. Newer ones (of a run resumed
    from an earlier explicit checkpoint) are never deleted."""
    older = sorted(
        p for p in root.iterdir() if TAG_RE.match(p.name) and _step_of(p) < step and (p / STATE_FILE).exists()
    )
    for old in older[: max(0, len(older) - (keep_last - 1))]:
        os.replace(old, root / f".deleting-{old.name}")  # a kill mid-delete leaves no half checkpoint in view
    for doomed in root.glob(".deleting-*"):  # this prune's, and any an earlier kill interrupted
        shutil.rmtree(doomed)


def _step_of(folder: Path) -> int:
    return int(TAG_RE.match(folder.name).group(1))


def set_aside_newer(root: Path, resumed: Path, step: int) -> None:
    """After a resume from `step`, rename the checkpoints past it (an abandoned attempt's) to
    step-N.abandoned-<time>, its eval results past it likewise, and point `latest` at the resumed one, so a
    later `--resume auto` (after a crash before this run's first save) cannot go back to them. Nothing is
    deleted."""
    if not root.is_dir():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in sorted(p for p in root.iterdir() if TAG_RE.match(p.name) and _step_of(p) > step):
        aside = root / f"{folder.name}.abandoned-{stamp}"
        os.replace(folder, aside)
        log.warning(
            "checkpoint %s is past the resumed step %d: kept as %s (delete it if unneeded)",
            folder.name,
            step,
            aside,
        )
    # the abandoned attempt's eval results past the step, which this run's evals would replace
    for result in sorted((root.parent / "eval").glob("step-*.json")):
        tag = TAG_RE.match(result.stem)
        if tag and int(tag.group(1)) > step:
            aside = result.with_name(f"{result.name}.abandoned-{stamp}")
            os.replace(result, aside)
            log.warning("eval result %s is past the resumed step %d: kept as %s", result.name, step, aside)
    if resumed.resolve().parent == root.resolve():
        _write_atomic(root / "latest", resumed.name)


def check_complete(folder: Path) -> dict:
    """The checkpoint's state if every file of its manifest is present with its size, else UserError."""
    state_file = folder / STATE_FILE
    if not folder.exists():
        raise UserError(f"{folder} does not exist")
    if not folder.is_dir():  # e.g. `latest`, DeepSpeed's pointer file
        raise UserError(f"{folder} is a file, not a checkpoint: give a step-XXXXXXXX folder")
    if not state_file.exists():
        if folder.is_dir() and (
            (folder / "checkpoints").is_dir() or any(TAG_RE.match(p.name) for p in folder.iterdir())
        ):
            raise UserError(
                f"{folder} is a run or checkpoints folder, not a checkpoint: give a step-XXXXXXXX folder "
                "inside it (training resumes its latest with --resume auto)"
            )
        raise UserError(f"{folder}: no {STATE_FILE} (an interrupted save?)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{state_file}: unreadable ({e})") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing or not isinstance(state["files"], dict) or not state["files"]:
        raise UserError(
            f"{state_file}: not a checkpoint state (missing or empty: {', '.join(missing or ['files'])})"
        )
    for name, size in state["files"].items():
        f = folder / name
        if not f.is_file():
            raise UserError(f"{folder}: file {name} is missing")
        if f.stat().st_size != size:
            raise UserError(f"{folder}: file {name} has {f.stat().st_size} bytes, the manifest says {size}")
    return state


def latest_complete(root: Path) -> Path | None:
    """The checkpoint `latest` names when it is complete, else the newest complete one before it, skipping
    (and reporting) incomplete ones. Checkpoints newer than the one `latest` names are left by an earlier
    attempt that this run was resumed before (resuming them would undo that choice); without a `latest`, or
    with one naming no folder (a save killed before its rename), the newest complete one."""
    if not root.is_dir():
        return None
    pointer, named = root / "latest", None
    if pointer.is_file() and TAG_RE.match(tag := pointer.read_text().strip()) and (root / tag).is_dir():
        named = tag
        try:
            check_complete(root / tag)
            return root / tag
        except UserError as e:
            log.warning("skipping checkpoint %s (named by latest): %s", tag, e)
    for folder in sorted((p for p in root.iterdir() if TAG_RE.match(p.name)), reverse=True):
        if named is not None and folder.name >= named:  # the broken one, reported above, or abandoned
            continue
        try:
            check_complete(folder)
            return folder
        except UserError as e:
            log.warning("skipping checkpoint %s: %s", folder.name, e)
    return None


def find_resume(cfg: RunConfig, resume: str | None) -> Path | None:
    """The checkpoint to resume from. None (a fresh run) is refused in an output_dir that has checkpoints:
    its saves would replace and prune them. `auto`: `latest_complete` under output_dir (None if there is
    no checkpoint; an error if there are only broken ones); else that path."""
    root = Path(cfg.output_dir) / "checkpoints"
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file, not the checkpoints folder: move it, or set another output_dir")
    existing = sorted(p for p in root.iterdir() if TAG_RE.match(p.name)) if root.is_dir() else []
    if resume is None:
        if existing:
            raise UserError(
                f"{cfg.output_dir} already holds checkpoints (newest {existing[-1].name}): continue that run "
                "with --resume auto, or set another output_dir"
            )
        return None
    if resume != "auto":
        check_complete(Path(resume))
        return Path(resume)
    folder = latest_complete(root)
    if folder is None and existing:
        reasons = []
        for p in existing:
            try:
                check_complete(p)
                reasons.append(
                    f"{p.name} is newer than the one `latest` names (an abandoned attempt's; --resume {p} takes it)"
                )
            except UserError as e:
                reasons.append(str(e))
        raise UserError(
            f"no complete checkpoint in {root} to resume from ({'; '.join(reasons)}); repair or move them "
            "to start over"
        )
    return folder


def shared_dir_problem(reports: list[tuple[bool, str, str | None]], output_dir: str) -> str | None:
    """What is wrong with the ranks' view of output_dir, from each rank's (sees rank 0's marker, host, the
    checkpoint it would resume from); None if they all see one folder."""
    blind = [r for r, (sees, _, _) in enumerate(reports) if not sees]
    if blind:
        hosts = sorted({reports[r][1] for r in blind})
        return (
            f"output_dir {output_dir} is not on a file system every node shares: rank 0's file there is not "
            f"seen by rank(s) {blind} (on {', '.join(hosts)}). Checkpoints need every rank's shards in one "
            "folder: set output_dir to a shared path (NFS, Lustre, ...)"
        )
    choices = sorted({str(folder) for _, _, folder in reports})
    if len(choices) > 1:
        return f"the ranks would resume from different checkpoints ({', '.join(choices)}); is {output_dir} shared?"
    return None


def check_shared_output_dir(cfg: RunConfig, folder: Path | None) -> None:
    """Refuse, on every rank alike, an output_dir the ranks do not share (node-local disks): rank 0 alone
    would write checkpoints missing the other nodes' shards, and a resume would pair ranks at other steps."""
    if dist.world_size() == 1:
        return
    out = Path(cfg.output_dir)
    marker = None
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        marker = out / f".shared-check-{secrets.token_hex(8)}"
        marker.write_text("rank 0\n")
    marker = out / dist.all_gather_object(marker and marker.name)[0]  # after rank 0 wrote it, as seen here
    reports = dist.all_gather_object((marker.is_file(), socket.gethostname(), folder and str(folder)))
    if dist.is_main():
        marker.unlink()
    problem = shared_dir_problem(reports, cfg.output_dir)
    if problem:
        raise UserError(problem)


def check_compatible(cfg: RunConfig, state: dict, folder: Path, force: bool) -> None:
    """Refuse to resume a checkpoint trained with different settings (unless forced) or world size."""
    if state["world_size"] != dist.world_size():
        raise UserError(
            f"{folder} was saved with {state['world_size']} ranks, this run has {dist.world_size()}: "
            "ZeRO shards are per rank, resume with the same number of ranks"
        )
    saved_stage = state["config"].get("deepspeed", {}).get("zero_stage", cfg.deepspeed.zero_stage)
    if saved_stage != cfg.deepspeed.zero_stage:
        raise UserError(
            f"{folder} was saved under ZeRO stage {saved_stage}, this run uses {cfg.deepspeed.zero_stage}: "
            "the optimizer shards are laid out per stage, resume with deepspeed.zero_stage="
            f"{saved_stage} (export the checkpoint to start a new run from its weights)"
        )
    if state["config_hash"] not in accepted_hashes(cfg) and not force:
        changes = "; ".join(training_diff(state["config"], cfg.model_dump(mode="json")))
        raise UserError(
            f"{folder} was trained with a different config ({changes}). "
            "Resume with the same settings, or pass --allow-config-change to resume anyway."
        )


def _as_recorded(old: dict | None, new: dict) -> dict:
    """`new` as `old` was recorded: checkpoints from before the rows' hash have no `content`."""
    return new if old is None or "content" in old else {k: v for k, v in new.items() if k != "content"}


def check_same_data(saved: dict, data: dict[str, dict], folder: Path, force: bool) -> None:
    """Refuse (unless forced) to resume on prepared data other than the checkpoint's (`MixedRows.summaries`):
    the sampler's row ids would name other rows. Checkpoints from before this record are not checked."""
    before = saved.get("data")
    if before is None or force:
        return
    data = {label: _as_recorded(before.get(label), summary) for label, summary in data.items()}
    if before == data:
        return
    changes = []
    for label in sorted(set(before) | set(data)):
        old, new = before.get(label), data.get(label)
        if old is None or new is None:
            changes.append(f"source '{label}' {'added' if old is None else 'removed'}")
        elif (old["rows"], old["tokens"]) != (new["rows"], new["tokens"]):
            changes.append(
                f"source '{label}' (rows {old['rows']} -> {new['rows']}, tokens {old['tokens']} -> {new['tokens']})"
            )
        elif {**old, "content": None} == {**new, "content": None}:
            changes.append(
                f"source '{label}' (the same counts and settings, other rows: its documents changed)"
            )
        elif old != new:
            changes.append(
                f"source '{label}' (the same counts; its tokenizer, template, packing or format differ)"
            )
    raise UserError(
        f"{folder} was trained on other prepared data: {'; '.join(changes)}. The sampler would read other rows; "
        "prepare the data as it was (the same inputs, tokenizer, chat template and packing), or pass "
        "--allow-data-change to resume anyway."
    )


def check_same_added_tokens(saved: dict, added: list[str], folder: Path) -> None:
    """Refuse to resume with other added tokens than the checkpoint's: their rows would mean other tokens,
    whatever the flags. Checkpoints from before this record are checked by the shapes alone."""
    before = saved.get("added_tokens")
    if before is None or before == added:
        return
    gone, new = [t for t in before if t not in added], [t for t in added if t not in before]
    what = f"dropped {gone[:5]}, new {new[:5]}" if gone or new else "the same tokens in another order"
    raise UserError(
        f"{folder} was trained with {len(before)} added tokens, model.add_tokens now gives {len(added)} ({what}). "
        "Restore the token file it trained with (the list is in its trainer_state.json, 'added_tokens'), or "
        "export the checkpoint (launch/export.py) and start a new run from its weights."
    )


def load(engine, folder: Path) -> dict:
    """Restore engine, optimizer, scheduler and RNG from a complete checkpoint; return its state."""
    state = check_complete(folder)
    try:
        path, _ = engine.load_checkpoint(str(folder.parent), tag=folder.name)
        rng = torch.load(folder / f"rng_rank{dist.rank()}.pt", weights_only=False)
    except UNREADABLE as e:
        if SHAPE_MISMATCH.search(str(e)):  # ZeRO-1/2 and ZeRO-3 word it differently
            raise UserError(
                f"{folder}: its weights have other shapes than this run's model ({e}). The model settings must "
                "be the ones it trained with (model.add_tokens and the file's tokens, overrides, expansion)"
            ) from None
        raise UserError(f"{folder}: a file cannot be read ({type(e).__name__}: {e})") from None  # wrong bytes
    if path is None:
        raise UserError(f"DeepSpeed could not load the checkpoint {folder}")
    set_rng_state(rng)
    return state


# ---------------------------------------------------------------- export


def consolidated_state_dict(folder: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full weights from a checkpoint of any ZeRO stage (read offline, no process group): the trained ones
    from the fp32 master copy."""
    if zero_stage in (0, 1):
        module = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        if zero_stage == 0:
            return module
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    trained = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    # Stage 1 writes no frozen parameters into its ZeRO files (LoRA's base, Control-LLM's pretrained blocks);
    # the module states hold them, unchanged since the start.
    return {**module, **trained} if zero_stage == 1 else trained


def _check_export_target(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """`out` may be replaced only when it is empty or an earlier export, and never holds the checkpoint."""
    ckpt, target = checkpoint.resolve(), out.resolve()
    if ckpt.is_relative_to(target) or target.is_relative_to(ckpt):
        raise UserError(f"export folder {out} and the checkpoint {checkpoint} overlap; choose another --out")
    check_export_folder(out, overwrite)


def check_export_folder(out: Path, overwrite: bool, fix: str = "choose another --out") -> None:
    """Refuse an export folder that is a file, holds files not written by an export, or (without
    `overwrite`) an earlier export; `fix` says what to do instead."""
    if out.exists() and not out.is_dir():
        raise UserError(f"export folder {out} is a file; {fix}")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / EXPORT_MARKER).is_file():
        raise UserError(f"{out} holds files that are not an export of ours: move them or {fix}")
    if not overwrite:
        raise UserError(f"export folder {out} is not empty; pass --overwrite or choose another --out")


def _check_shapes(checkpoint: Path, cfg: RunConfig, model: torch.nn.Module, weights: dict) -> None:
    expected = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (the model: {tuple(expected[k].shape)})"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if not wrong:
        return
    hint = ""
    if cfg.model.add_tokens and any("embed_tokens" in w or "lm_head" in w for w in wrong):
        hint = (
            f". Its vocabulary is not the one model.add_tokens ({cfg.model.add_tokens}) gives now: the file "
            "changed since training, or the checkpoint predates the record of its added tokens and lists "
            "tokens the tokenizer already encodes as one id, which are no longer added again"
        )
    raise UserError(f"{checkpoint}: the weights' shapes differ from the model's: {'; '.join(wrong)}{hint}")


def export_hf(checkpoint: Path, out: Path, overwrite: bool = False, merge: bool | None = None) -> Path:
    """Write a Hugging Face folder (safetensors, config, tokenizer) from a training checkpoint.

    With LoRA the peft adapter (and the tokenizer) goes to `out/adapter`, and the merged full model to `out`
    when `merge` is set (None: the run's `peft.merge_on_export`).
    """
    from train.model import DTYPES, build_for_training, build_tokenizer

    state = check_complete(checkpoint)
    cfg = validate(state["config"], source=f"{checkpoint}/{STATE_FILE}", stored=True)
    out = Path(out)
    _check_export_target(checkpoint, out, overwrite)
    try:
        weights = consolidated_state_dict(checkpoint, cfg.deepspeed.zero_stage)
    except UNREADABLE as e:
        raise UserError(f"{checkpoint}: the weights cannot be read ({type(e).__name__}: {e})") from None
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"activation_checkpointing": "none"})})
    added = state.get("added_tokens")
    if added is None and cfg.model.add_tokens:
        log.warning(
            "%s predates the record of its added tokens: they are read again from %s, which must be the file "
            "it trained with",
            checkpoint,
            cfg.model.add_tokens,
        )
    model = build_for_training(cfg, meta=True, stored=True, added=added)
    _check_shapes(checkpoint, cfg, model, weights)
    dtype = DTYPES[cfg.model.dtype]
    weights = {k: v.to(dtype) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise UserError(
            f"{checkpoint}: weights do not match the model (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg.peft is not None:
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        build_tokenizer(cfg.model, added).save_pretrained(tmp / "adapter")
        merge = cfg.peft.merge_on_export if merge is None else merge
        model = model.merge_and_unload() if merge else None
    if model is not None:
        model.config.use_cache = True
        tokenizer = build_tokenizer(cfg.model, added)
        # a base model's config stops generating only at <|end_of_text|>; a reply ends at <|eot_id|>
        model.generation_config.eos_token_id = stop_token_ids(tokenizer, model.generation_config.eos_token_id)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    (tmp / EXPORT_MARKER).write_text(
        json.dumps(
            {"checkpoint": str(checkpoint), "step": state["step"], "config_hash": state["config_hash"]}
        )
    )
    old = out.with_name(f".old-{out.name}")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():  # renamed aside, not deleted, until the new export is in place
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
