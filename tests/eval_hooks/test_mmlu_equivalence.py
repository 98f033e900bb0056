"""Acceptance: our cl_mmlu and cl_mmlu_pro and lm-eval's built-in mmlu and mmlu_pro YAMLs, pointed at the same local rows,
agree."""

import json
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from eval_hooks import TASKS_DIR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"

BUILTIN_MMLU = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"


def _builtin_subject_task(subject: str, tmp: Path) -> dict:
    """lm-eval's own mmlu_<subject> config with its hub dataset swapped for per-subject local files."""
    files = {}
    for split in ("test", "dev"):
        rows = [
            r
            for r in map(json.loads, (FIXTURES / "mmlu" / f"{split}.jsonl").open())
            if r["subject"] == subject
        ]
        files[split] = tmp / f"{subject}_{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_yaml(BUILTIN_MMLU / f"mmlu_{subject}.yaml")
    cfg.pop("tag", None)
    cfg.update(
        task=f"builtin_mmlu_{subject}",
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {k: str(v) for k, v in files.items()}},
    )
    return cfg


@pytest.mark.parametrize("shots", [5])
def test_cl_mmlu_equals_builtin_mmlu(tiny_model, tiny_tokenizer, tmp_path, shots):
    from lm_eval.models.huggingface import HFLM

    subjects = ("anatomy", "elementary_mathematics")
    tm = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(FIXTURES)}
    )
    tasks = ["cl_mmlu", *(_builtin_subject_task(s, tmp_path) for s in subjects)]
    lm = HFLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, batch_size=8)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=tm, num_fewshot=shots, bootstrap_iters=0
    )

    ours = {s["doc"]["question"]: s for s in out["samples"]["cl_mmlu"]}
    theirs = {s["doc"]["question"]: s for subj in subjects for s in out["samples"][f"builtin_mmlu_{subj}"]}
    assert ours.keys() == theirs.keys() and len(ours) == 6
    for q, sample in ours.items():
        assert sample["arguments"] == theirs[q]["arguments"]  # identical prompts and continuations
        assert sample["resps"] == theirs[q]["resps"]
    builtin_acc = sum(s["acc"] for s in theirs.values()) / len(theirs)
    assert out["results"]["cl_mmlu"]["acc,none"] == pytest.approx(builtin_acc)


def test_cl_mmlu_pro_prompts_equal_builtin_mmlu_pro():
    from lm_eval.tasks import get_task_dict

    builtin = Path(lm_eval.__file__).parent / "tasks" / "mmlu_pro"
    cfg = {**load_yaml(builtin / "_default_template_yaml"), **load_yaml(builtin / "mmlu_pro_math.yaml")}
    cfg.pop("include", None)
    files = {s: str(FIXTURES / "mmlu_pro" / f"{s}.jsonl") for s in ("test", "validation")}
    cfg.update(task="builtin_mmlu_pro_math", dataset_path="json", dataset_kwargs={"data_files": files})
    tm = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(FIXTURES)}
    )
    tasks = get_task_dict(["cl_mmlu_pro", cfg], tm)
    ours = [tasks["cl_mmlu_pro"].fewshot_context(d, 5) for d in tasks["cl_mmlu_pro"].test_docs()]
    theirs = [
        tasks["builtin_mmlu_pro_math"].fewshot_context(d, 5)
        for d in tasks["builtin_mmlu_pro_math"].test_docs()
    ]
    assert len(theirs) == 2 and [p for p in ours if "about math." in p] == theirs
