"""Prompt builders our task YAMLs call with `!function` where a Jinja template would be unreadable."""

from __future__ import annotations

LETTERS = "ABCDEFGHIJ"

# Our wording of the Control-LLM Chinese pretrain CoT instruction: pick the best of A-D, brief reasoning for
# easy questions, "## 步骤 N" steps for hard ones, and a fixed closing line the last-match regex reads.
COT_ZH_INSTRUCTION = (
    "请回答下面的单项选择题，从A、B、C、D四个选项中选出最佳答案。"
    "如果问题简单，请简要说明理由；如果问题复杂，请按“## 步骤 1: ...”、“## 步骤 2: ...”的格式逐步推理。"
    "无论如何，回答都必须以“最佳答案是 [答案字母]。[答题结束]”结尾。\n\n"
)


def _cot_zh(question: str, doc: dict) -> str:
    options = "".join(f"{k}. {doc[k]}\n" for k in "ABCD")
    return f"{COT_ZH_INSTRUCTION}问题：{question.strip()}\n{options}让我们一步一步地思考。\n"


def ceval_cot_zh(doc: dict) -> str:
    """C-Eval row (`question`, A-D) in the Chinese pretrain CoT prompt."""
    return _cot_zh(doc["question"], doc)


def cmmlu_cot_zh(doc: dict) -> str:
    """CMMLU row (`Question`, A-D) in the Chinese pretrain CoT prompt."""
    return _cot_zh(doc["Question"], doc)


def mmlu_pro_question(doc: dict) -> str:
    """MMLU-Pro question with lettered options, ending where the model starts its reasoning."""
    options = "".join(
        f"{LETTERS[i]}. {opt.strip()}\n" for i, opt in enumerate(doc["options"][: len(LETTERS)])
    )
    return f"Question:\n{doc['question'].strip()}\nOptions:\n{options}Answer: Let's think step by step."


def mmlu_pro_cot_answer(doc: dict) -> str:
    """An exemplar's reasoning and answer: `cot_content` without its leading "A: Let's think step by step."."""
    return doc["cot_content"].removeprefix("A: Let's think step by step.").strip()
