"""Acceptance: our Swallow English tasks and lm-eval's built-ins, pointed at the same local rows, render the same
few-shot contexts (the same exemplars, drawn by lm-eval's seeded sampler, shown the same way)."""

from pathlib import Path

import datasets
import lm_eval
import pytest
from lm_eval.tasks._yaml_loader import load_yaml

from eval_hooks.local_data import read_rows
from eval_hooks.runner import task_manager

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
BUILTIN = Path(lm_eval.__file__).parent / "tasks"

# ours: (lm-eval's YAML, its splits as local files); 4 shots, as the Swallow card runs them
YAML_TASKS = {
    "cl_gsm8k": ("gsm8k/gsm8k.yaml", {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}),
    "cl_hellaswag": (
        "hellaswag/hellaswag.yaml",
        {"train": "hellaswag/train.jsonl", "validation": "hellaswag/validation.jsonl"},
    ),
    "cl_openbookqa": (
        "openbookqa/openbookqa.yaml",
        {"train": "openbookqa/train.jsonl", "test": "openbookqa/test.jsonl"},
    ),
    "cl_triviaqa": (
        "triviaqa/default.yaml",
        {"train": "triviaqa/train.jsonl", "validation": "triviaqa/validation.jsonl"},
    ),
}


def _contexts(task) -> list[str]:
    task.set_fewshot_seed(1234)  # simple_evaluate's default fewshot_random_seed
    task.build_all_requests(rank=0, world_size=1)
    contexts: dict[int, str] = {}  # one per doc (squadv2 also asks a log-likelihood of "unanswerable")
    for inst in task.instances:
        contexts.setdefault(inst.doc_id, inst.args[0])
    return list(contexts.values())


def _builtin_squadv2():
    """lm-eval's squadv2 (a Python class on the hub's squad_v2) on the local official files, in HF's row schema."""
    from lm_eval.tasks.squadv2.task import SQuAD2

    def split(name: str) -> datasets.Dataset:
        rows = read_rows(FIXTURES / "squadv2" / f"{name}-v2.0.json")
        for row in rows:
            answers = row.pop("answers")
            row["answers"] = {
                "text": [a["text"] for a in answers],
                "answer_start": [a["answer_start"] for a in answers],
            }
        return datasets.Dataset.from_list(rows)

    class LocalSQuAD2(SQuAD2):
        def download(self, *args, **kwargs):
            self.dataset = {"train": split("train"), "validation": split("dev")}

        # 0.4.13's fewshot_context passes the few-shot override field; the class predates that argument.
        def doc_to_text(self, doc, override=None):
            return super().doc_to_text(doc)

        def doc_to_target(self, doc, override=None):
            return super().doc_to_target(doc)

    task = LocalSQuAD2()
    task.set_config("num_fewshot", 4)
    return task


@pytest.mark.parametrize("name", [*YAML_TASKS, "cl_squadv2"])
def test_swallow_en_fewshot_contexts_equal_lm_evals(name):
    tm = task_manager(FIXTURES)
    if name == "cl_squadv2":
        theirs = _builtin_squadv2()
    else:
        yaml, files = YAML_TASKS[name]
        cfg = load_yaml(BUILTIN / yaml)
        cfg.pop("tag", None)
        cfg.update(
            task=f"builtin_{name}",
            dataset_path="json",
            dataset_name=None,
            dataset_kwargs={"data_files": {k: str(FIXTURES / v) for k, v in files.items()}},
            num_fewshot=4,
        )
        theirs = tm.load([cfg])["tasks"][cfg["task"]]
    ours = _contexts(tm.load(name)["tasks"][name])
    assert ours == _contexts(theirs) and len(ours) == 3
    assert all(c.count("\n\n") >= 4 for c in ours)  # four exemplars before each question
