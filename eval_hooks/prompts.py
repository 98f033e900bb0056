"""Prompt builders our task YAMLs call with `!function` where a Jinja template would be unreadable."""

from __future__ import annotations

import re
import string

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


# --- llm-jp-eval (Swallow's Japanese tasks): every row becomes {"input", "output"} --------------------------------

LLMJP_HEADER = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n"
# Our wording of each task's instruction.
LLMJP_INSTRUCTIONS = {
    "jcommonsenseqa": "質問と回答の選択肢を読み、正しい選択肢の番号（0から4のいずれか）だけを答えてください。",
    "jemhopqa": "質問に対する答えを、余計な説明を付けずに簡潔に答えてください。",
    "niilc": "質問に対する答えを簡潔に答えてください。答えが複数ある場合は「、」で区切ってください。",
    "jsquad": "文章を読み、質問の答えを文章中からそのまま抜き出して答えてください。",
    "jmmlu": "質問と選択肢を読み、正しい選択肢の記号（A、B、C、Dのいずれか）だけを答えてください。",
}


def _jcommonsenseqa(row: dict) -> dict:
    choices = ",".join(f"{i}.{row[f'choice{i}']}" for i in range(5))
    return {"input": f"質問：{row['question']}\n選択肢：{choices}", "output": str(row["label"])}


def _jemhopqa(row: dict) -> dict:
    return {"input": f"質問：{row['question']}", "output": row["answer"]}


def _niilc(row: dict) -> dict:
    return {"input": f"質問：{row['text']}", "output": "、".join(row["answers"])}


def _jsquad(row: dict) -> dict:
    context = row["context"].split("[SEP]", 1)[-1].strip()  # JSQuAD contexts are "title [SEP] body"
    return {"input": f"文章：{context}\n質問：{row['question']}", "output": row["answers"][0]["text"]}


def _jmmlu(row: dict) -> dict:
    choices = ",".join(f"{k}.{row[k]}" for k in "ABCD")
    return {"input": f"質問：{row['question']}\n選択肢：{choices}", "output": row["answer"]}


_LLMJP_CONVERTERS = {
    "jcommonsenseqa": _jcommonsenseqa,
    "jemhopqa": _jemhopqa,
    "niilc": _niilc,
    "jsquad": _jsquad,
    "jmmlu": _jmmlu,
}


def _llmjp_docs(task: str):
    convert = _LLMJP_CONVERTERS[task]
    instruction = LLMJP_HEADER + LLMJP_INSTRUCTIONS[task]

    def process(dataset):
        def row_to_sample(row: dict) -> dict:
            sample = {**convert(row), "instruction": instruction}
            if "fewshot" in row:  # exemplars attached by local_data.load keep the same shape
                sample["fewshot"] = [convert(shot) for shot in row["fewshot"]]
            return sample

        return dataset.map(row_to_sample, remove_columns=dataset.column_names)

    return process


jcommonsenseqa_docs = _llmjp_docs("jcommonsenseqa")
jemhopqa_docs = _llmjp_docs("jemhopqa")
niilc_docs = _llmjp_docs("niilc")
jsquad_docs = _llmjp_docs("jsquad")
jmmlu_docs = _llmjp_docs("jmmlu")


# --- other Swallow prompts ---------------------------------------------------------------------------------------


def mgsm_question(doc: dict) -> str:
    """MGSM ja: `問題：...\nステップごとの答え：` (the rows may already carry the prefixes)."""
    return f"問題：{doc['question'].removeprefix('問題：').strip()}\nステップごとの答え："


def mgsm_answer(doc: dict) -> str:
    """An MGSM exemplar's worked answer without its `ステップごとの答え：` prefix."""
    return doc["answer"].removeprefix("ステップごとの答え：").strip()


_LANG = {"en": "English", "ja": "Japanese"}


def _translation(src: str, tgt: str):
    def prompt(doc: dict) -> str:
        return f"{_LANG[src]} phrase: {doc['translation'][src]}\n{_LANG[tgt]} phrase:"

    return prompt


wmt_en_ja_prompt = _translation("en", "ja")
wmt_ja_en_prompt = _translation("ja", "en")


# --- Swallow's English tasks ---------------------------------------------------------------------------------------


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)  # WikiHow markup such as [header]
    return text.replace("  ", " ")


def hellaswag_docs(dataset):
    """HellaSwag rows plus {query, choices, gold}: "activity: ctx_a Ctx_b" and the cleaned endings. The raw columns
    stay, as in lm-eval's hellaswag, whose sampler drops an exemplar equal to the eval doc."""

    def convert(row: dict) -> dict:
        ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
        return {
            "query": _hellaswag_clean(f"{row['activity_label']}: {ctx}"),
            "choices": [_hellaswag_clean(e) for e in row["endings"]],
            "gold": int(row["label"]),
        }

    return dataset.map(convert)


def squadv2_docs(dataset):
    """SQuAD 2.0 rows with `golds` as the card's scorer (HF squad_v2, via lm-eval's squadv2) has them: the answer
    texts that normalise to something, else [""] (impossible questions); `target`, the exemplars' answer as
    lm-eval's squadv2 gives it: a space, then the first answer or "unanswerable" (after the target delimiter's
    space, so its exemplars read "Answer:  <answer>", two spaces)."""
    from eval_hooks.metrics import squad_normalize

    def convert(row: dict) -> dict:
        texts = [a["text"] for a in row["answers"]]
        return {
            "golds": [t for t in texts if squad_normalize(t)] or [""],
            "target": " " + (texts[0] if texts else "unanswerable"),
        }

    return dataset.map(convert)


def winograd_gold_index(doc: dict) -> int:
    """Index of the correct option (lm-eval's multiple-input convention)."""
    return int(doc["answer"]) - 1


def winograd_contexts(doc: dict) -> list[str]:
    """The sentence up to "_" with each option filled in."""
    head = doc["sentence"][: doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]


def winograd_continuation(doc: dict) -> str:
    """The text after "_", scored after each context; lm-eval's target_delimiter supplies the space before it."""
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


# --- MERA: prompt = the record's instruction template filled with its inputs ---------------------------------------


def mera_prompt(doc: dict) -> str:
    """`instruction.format(**inputs)`; plain-string inputs fill the template's one placeholder, whatever its
    name (`{inputs}` in most tasks, a task-specific name in others)."""
    inputs, instruction = doc["inputs"], doc["instruction"]
    if isinstance(inputs, dict):
        return instruction.format(**inputs)
    fields = {name for _, name, _, _ in string.Formatter().parse(instruction) if name}
    if len(fields) != 1:
        raise ValueError(
            f"MERA record {doc.get('meta')}: string inputs need one placeholder, found {sorted(fields)}"
        )
    return instruction.format(**{fields.pop(): inputs})


def mera_target(doc: dict) -> str:
    """The gold answer text (MultiQ: the first answer segment)."""
    outputs = doc["outputs"]
    return outputs[0]["segment"] if isinstance(outputs, list) else str(outputs)
