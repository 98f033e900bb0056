"""Our task YAMLs on the fixture data: prompts as documented, answer extraction, suites end to end."""

from pathlib import Path

import pytest
from lm_eval.filters.extraction import RegexFilter

from eval_hooks import TASKS_DIR
from eval_hooks.local_data import load
from eval_hooks.runner import task_manager

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


@pytest.fixture(scope="module")
def tm():
    return task_manager(FIXTURES)


def _prompts(tm, name: str) -> list[str]:
    task = tm.load(name)["tasks"][name]
    task.build_all_requests(rank=0, world_size=1)
    return [inst.args[0] for inst in task.instances if inst.idx == 0]


def test_every_task_has_three_fixture_items(tm):
    for yaml in TASKS_DIR.rglob("cl_*.yaml"):
        task = tm.load(yaml.stem)["tasks"][yaml.stem]
        assert len(list(task.eval_docs)) >= 3, yaml.stem


def test_ceval_prompt_uses_lm_eval_subject_header(tm):
    prompt = _prompts(tm, "cl_ceval_valid")[0]
    assert prompt.startswith("以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n")
    assert prompt.endswith(
        "在OSI参考模型中，负责路由选择的是____。\nA. 物理层\nB. 数据链路层\nC. 网络层\nD. 传输层\n答案："
    )


def test_cot_zh_prompt_and_last_match(tm):
    prompt = _prompts(tm, "cl_cmmlu_cot_zh")[0]
    assert "最佳答案是 [答案字母]。[答题结束]" in prompt and prompt.endswith("让我们一步一步地思考。\n")
    task = tm.load("cl_cmmlu_cot_zh")["tasks"]["cl_cmmlu_cot_zh"]
    pattern = task.config.filter_list[0]["filter"][0]["regex_pattern"]
    resp = "## 步骤 1: 也许答案是 A。\n## 步骤 2: 不对。最佳答案是 [C]。[答题结束"
    assert RegexFilter(regex_pattern=pattern, group_select=-1).apply([[resp]], [{}]) == [["C"]]


def test_bbh_prompt_is_cot_exemplars_then_question(tm):
    prompt = _prompts(tm, "cl_bbh_cot_3shot")[0]
    assert prompt.startswith("Evaluate the result of a random Boolean expression.\n\nQ: not ( True ) and")
    assert "canary" not in prompt
    assert prompt.endswith(
        "So the answer is False.\n\nQ: True and not False is\nA: Let's think step by step.\n"
    )


def test_mmlu_pro_shots_come_from_the_same_category(tm):
    prompts = _prompts(tm, "cl_mmlu_pro")
    math, bio = prompts[0], prompts[2]
    assert math.startswith("The following are multiple choice questions (with answers) about math.")
    assert math.count("Question:\n") == 6 and "photosynthesis" not in math
    assert "Answer: Let's think step by step. 9 + 10 = 19. The answer is (B).\n\n" in math
    assert math.endswith(
        "Question:\nWhat is 12 * 3?\nOptions:\nA. 30\nB. 33\nC. 36\nD. 39\nE. 42\nAnswer: Let's think step by step."
    )
    assert bio.count("photosynthesis") == 5


def test_loader_reads_per_subject_folders_and_reports_missing_data(tmp_path):
    ds = load(data_dir=str(FIXTURES), files={"test": "cmmlu/test", "dev": "cmmlu/dev"}, shots_from="dev")
    assert sorted(set(ds["test"]["subject"])) == ["agronomy", "anatomy"]
    assert [s["Question"] for s in ds["test"][0]["fewshot"]] == ["小麦的主要用途是？"]
    with pytest.raises(FileNotFoundError, match="docs/eval.md"):
        load(data_dir=str(tmp_path), files={"test": "cmmlu/test"})
    with pytest.raises(ValueError, match="data_dir"):
        load(files={"test": "cmmlu/test"})
