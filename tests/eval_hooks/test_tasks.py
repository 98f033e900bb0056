"""Our task YAMLs on the fixture data: prompts as documented, answer extraction, suites end to end."""

import json
import math
import re
from pathlib import Path

import pytest
from lm_eval.api.registry import get_filter
from lm_eval.filters.extraction import RegexFilter

from eval_hooks import TASKS_DIR
from eval_hooks.local_data import check_rows, load, read_rows, read_split, required_fields
from eval_hooks.runner import task_manager

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


@pytest.fixture(scope="module")
def tm():
    return task_manager(FIXTURES)


def _prompts(tm, name: str) -> list[str]:
    task = tm.load(name)["tasks"][name]
    task.set_fewshot_seed(1234)  # as simple_evaluate seeds lm-eval's random sampler (Swallow's English tasks)
    task.build_all_requests(rank=0, world_size=1)
    return [inst.args[0] for inst in task.instances if inst.idx == 0]


def _extract(task, response: str) -> str:
    """What the task's first configured filter pipeline, every step with all its arguments, keeps of a response."""
    resps = [[response]]
    for step in task.config.filter_list[0]["filter"]:
        kwargs = {k: v for k, v in step.items() if k != "function"}
        resps = list(get_filter(step["function"])(**kwargs).apply(resps, [{}]))
    [answer] = resps  # the pipelines end in take_first: one answer per doc
    return answer


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


@pytest.mark.parametrize(
    ("name", "gold_letter", "gold_text"),
    [
        ("cl_ceval_valid", lambda d: d["answer"], lambda d: d[d["answer"]]),
        ("cl_cmmlu", lambda d: d["Answer"], lambda d: d[d["Answer"]]),
        ("cl_mmlu", lambda d: "ABCD"[d["answer"]], lambda d: d["choices"][d["answer"]]),
    ],
)
def test_letter_choice_target_is_the_gold_letter(tm, name, gold_letter, gold_text):
    # acc compares log-likelihoods of the letters: the target's letter must be the one the prompt prints
    # before the gold option
    task = tm.load(name)["tasks"][name]
    for doc in task.eval_docs:
        letter = task.doc_to_choice(doc)[task.doc_to_target(doc)]
        assert letter == gold_letter(doc)
        assert f"\n{letter}. {gold_text(doc)}\n" in task.doc_to_text(doc)


def test_cot_zh_prompt_and_last_match(tm):
    prompt = _prompts(tm, "cl_cmmlu_cot_zh")[0]
    assert "最佳答案是 [答案字母]。[答题结束]" in prompt and prompt.endswith("让我们一步一步地思考。\n")
    task = tm.load("cl_cmmlu_cot_zh")["tasks"]["cl_cmmlu_cot_zh"]
    resp = "## 步骤 1: 也许答案是 A。\n## 步骤 2: 不对。最佳答案是 [C]。[答题结束"
    assert _extract(task, resp) == "C"  # the configured filter keeps the last match, not the first


def test_bbh_prompt_is_cot_exemplars_then_question(tm):
    prompt = _prompts(tm, "cl_bbh_cot_3shot")[0]
    assert prompt.startswith("Evaluate the result of a random Boolean expression.\n\nQ: not ( True ) and")
    assert "canary" not in prompt
    assert prompt.endswith(
        "So the answer is False.\n\nQ: True and not False is\nA: Let's think step by step.\n"
    )


def test_mmlu_pro_shots_come_from_the_same_category(tm):
    prompts = _prompts(tm, "cl_mmlu_pro")
    math, bio = prompts[0], prompts[1]  # docs interleaved by category: math, biology, math
    assert math.startswith("The following are multiple choice questions (with answers) about math.")
    assert math.count("Question:\n") == 6 and "photosynthesis" not in math
    assert "Answer: Let's think step by step. 9 + 10 = 19. The answer is (B).\n\n" in math
    assert math.endswith(
        "Question:\nWhat is 12 * 3?\nOptions:\nA. 30\nB. 33\nC. 36\nD. 39\nE. 42\nAnswer: Let's think step by step."
    )
    assert bio.count("photosynthesis") == 5


@pytest.mark.parametrize(
    ("name", "responses"),
    [
        ("cl_mmlu_pro", {"so the answer is (J).": "J", "the answer is E": "E", "the answer is (A)": "A"}),
        ("cl_meta_mmlu_pro_5shot", {"The best answer is (J).": "J", "the answer is (E)": "E"}),
    ],
)
def test_mmlu_pro_answer_letters_run_to_j(tm, name, responses):
    # MMLU-Pro has up to ten options: letters past D must be extracted too
    task = tm.load(name)["tasks"][name]
    assert {resp: _extract(task, resp) for resp in responses} == responses


def test_loader_reads_per_subject_folders_and_reports_missing_data(tmp_path):
    ds = load(data_dir=str(FIXTURES), files={"test": "cmmlu/test", "dev": "cmmlu/dev"}, shots_from="dev")
    assert sorted(set(ds["test"]["subject"])) == ["agronomy", "anatomy"]
    assert [s["Question"] for s in ds["test"][0]["fewshot"]] == ["小麦的主要用途是？"]
    with pytest.raises(FileNotFoundError, match="docs/eval.md"):
        load(data_dir=str(tmp_path), files={"test": "cmmlu/test"})
    with pytest.raises(ValueError, match="data_dir"):
        load(files={"test": "cmmlu/test"})


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    src = FIXTURES / "jmmlu" / "high_school_mathematics.csv"
    path = tmp_path / "subject.csv"
    path.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())  # as Excel saves a CSV
    columns = ["question", "A", "B", "C", "D", "answer"]
    assert read_rows(path, columns) == read_rows(src, columns)
    assert read_rows(path, columns)[0]["question"] == "2+2は？"
    path = tmp_path / "rows.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'[{"q": 1}]')
    assert read_rows(path) == [{"q": 1}]


# JGLUE ships JSON lines under a .json name.
@pytest.mark.parametrize("rel", ["mmlu/test.jsonl", "jcommonsenseqa/valid-v1.1.json"])
def test_a_bad_json_line_is_named_by_file_and_line(tmp_path, rel):
    lines = (FIXTURES / rel).read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:40]  # line 3 cut short, as an interrupted write leaves it
    path = tmp_path / rel
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} line 3: not JSON \("):
        load(data_dir=str(tmp_path), files={"test": rel.rsplit(".", 1)[0]})


def test_a_one_line_json_lines_file_is_one_row(tmp_path):
    # A one-line JGLUE file parses as one object: a row, not BBH's {"examples": [...]} wrapper.
    line = (FIXTURES / "jcommonsenseqa" / "valid-v1.1.json").read_text(encoding="utf-8").splitlines()[0]
    path = tmp_path / "jcommonsenseqa" / "valid-v1.1.json"
    path.parent.mkdir()
    path.write_text(line + "\n", encoding="utf-8")
    rows = load(data_dir=str(tmp_path), files={"valid": "jcommonsenseqa/valid-v1.1"})["valid"]
    assert rows["question"] == ["寒い日に首に巻くものは？"] and rows["label"] == [1]


MMLU_ROW = {"question": "2 + 2 = ?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": None}, r"missing field\(s\) \['question'\]"),
        ({"answer": 9}, r"field 'answer' is 9, expected one of \[0, 1, 2, 3\]"),
        ({"answer": True}, r"field 'answer' is True"),
        ({"choices": "abcd"}, r"field 'choices' must be a list of 4 strings, got 'abcd'"),
        ({"choices": ["3", "4", "5"]}, r"field 'choices' must be a list of 4 strings"),
    ],
)
def test_mmlu_rows_the_prompt_cannot_use_are_named_by_file_row_and_field(tmp_path, change, message):
    bad = {k: v for k, v in {**MMLU_ROW, **change}.items() if v is not None}
    path = tmp_path / "mmlu" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(row) + "\n" for row in [MMLU_ROW] * 3 + [bad]))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} row 3: {message}"):
        load(data_dir=str(tmp_path), files={"test": "mmlu/test"})


@pytest.mark.parametrize(
    ("split", "name", "text", "message"),
    [
        (
            "ceval/val",
            "law_val.csv",
            "id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n",
            r"row 0: field 'answer' is 'E', expected one of \['A', 'B', 'C', 'D'\]",
        ),
        (
            "cmmlu/test",
            "law.csv",
            "Question,A,B,C,D,Answer\nq,a,b,c\n",
            r"row 0: missing field\(s\) \['D', 'Answer'\]",
        ),
        (
            "mmlu_pro/test",
            "law.jsonl",  # a per-category folder: the category comes from the file name
            json.dumps({"question": "q", "options": ["a", "b"], "answer": "C"}),
            r"row 0: field 'answer' is 'C', expected one of \['A', 'B'\]",
        ),
    ],
)
def test_other_multiple_choice_formats_are_checked_too(tmp_path, split, name, text, message):
    path = tmp_path / split / name
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} {message}"):
        load(
            data_dir=str(tmp_path),
            files={"test": split},
            shots_by="category" if "pro" in split else "subject",
        )


def _local_task_files() -> list[tuple[str, str, str, list[str] | None]]:
    """(task, split, rel, CSV columns) for every split our own loader reads."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = []
    for yaml in sorted(TASKS_DIR.rglob("cl_*.yaml")):
        config = load_yaml(yaml, resolve_func=False, recursive=True)
        if str(config["custom_dataset"]).endswith("local_data.load"):
            kwargs = config["dataset_kwargs"]
            out += [(yaml.stem, split, rel, kwargs.get("columns")) for split, rel in kwargs["files"].items()]
    return out


def _without(row: dict, dotted: str) -> dict:
    head, _, rest = dotted.partition(".")
    if head.endswith("[]"):  # `a[].b`: one element of the list `a` loses `b`
        items = row[head[:-2]]
        return {**row, head[:-2]: [*items[:-1], _without(items[-1], rest)]}
    return {k: (_without(v, rest) if rest and k == head else v) for k, v in row.items() if rest or k != head}


def test_every_split_names_the_row_and_field_it_misses():
    # a missing field rendered as "None" in the prompt or scored against nothing, on the rank holding the
    # row (its peers then waited in lm-eval's gather); now every rank refuses it while loading
    checked = 0
    for task, split, rel, columns in _local_task_files():
        fields = required_fields(rel, split)
        assert fields, f"{task}: no field check for {rel}"
        rows = read_split(FIXTURES, rel, split, "subject", columns)
        for field in fields:
            broken = [*rows[:-1], _without(rows[-1], field)]
            with pytest.raises(
                ValueError, match=rf"row {len(rows) - 1}: missing field\(s\) \[{re.escape(repr(field))}[,\]]"
            ):
                check_rows(broken, rel, split, Path(rel))
            checked += 1
    assert checked > 150


def test_a_mera_instruction_its_inputs_cannot_fill_is_refused():
    rows = read_split(FIXTURES, "mera/rcb/dev", "dev", "subject")
    broken = [rows[0], {**rows[1], "inputs": {"premise": "p"}}]  # the instruction also names {hypothesis}
    with pytest.raises(
        ValueError, match=r"^rcb row 1: the instruction does not render with its inputs \(KeyError"
    ):
        check_rows(broken, "mera/rcb/dev", "dev", Path("rcb"))


@pytest.mark.parametrize(
    ("task", "change", "message"),
    [
        # what the scorers read inside the records: before, a TypeError/KeyError mid-scoring naming no row
        ("ruethics", lambda r: r["outputs"].pop("law"), r"missing field\(s\) \['outputs.law'\]"),
        ("multiq", lambda r: r["outputs"][0].pop("segment"), r"missing field\(s\) \['outputs\[\].segment'\]"),
        ("multiq", lambda r: r.update(outputs=[]), r"missing field\(s\) \['outputs\[\].segment'\]"),
        (
            "ruethics",
            lambda r: r["meta"].update(question="fair"),
            r"meta.question is 'fair', expected one of",
        ),
        (
            "ruethics",
            lambda r: r["outputs"].update(moral="yes"),
            r"outputs labels \{'moral': 'yes'\} are not 0 or 1",
        ),
        (
            "rucodeeval",
            lambda r: r["inputs"].update(tests="[{'a': 1"),
            r"inputs.tests is not a Python literal",
        ),
        (
            "rucodeeval",
            lambda r: r.update(outputs="3"),
            r"outputs must list one expected result per test case \(2\)",
        ),
    ],
    ids=["no-law", "no-segment", "no-answers", "question", "label", "tests", "outputs"],
)
def test_mera_fields_the_scorers_read_inside_records_are_checked(task, change, message):
    rows = read_split(FIXTURES, f"mera/{task}/dev", "dev", "subject")
    change(rows[-1])
    with pytest.raises(ValueError, match=rf"^{task} row {len(rows) - 1}: {message}"):
        check_rows(rows, f"mera/{task}/dev", "dev", Path(task))


@pytest.mark.parametrize(
    ("task", "change", "message"),
    [
        # Arrow cannot type the column: it became JSON text, every PARus gold '"1"' and every row scored 0
        (
            "parus",
            lambda r: r.update(outputs=int(r["outputs"])),
            r"field 'outputs' is int 1, but row 0 has str '2'",
        ),
        # ruCodeEval's expected outputs became one string: pass@k 0
        (
            "rucodeeval",
            lambda r: r["outputs"].__setitem__(0, 5),
            r"field 'outputs\[\]' is int 5, but row 0 has str '3'",
        ),
    ],
    ids=["parus", "rucodeeval"],
)
def test_a_column_the_scorer_reads_must_have_one_type(tmp_path, task, change, message):
    rows = [json.loads(line) for line in (FIXTURES / "mera" / task / "dev.jsonl").read_text().splitlines()]
    change(rows[1])
    path = tmp_path / "mera" / task / "dev.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} row 1: {message}; give it one type"):
        load(data_dir=str(tmp_path), files={"dev": f"mera/{task}/dev"})


def test_an_unread_column_of_mixed_types_is_kept_as_json_text():
    # JEMHopQA's derivations mix strings and lists; no prompt or scorer reads them.
    dev = load(data_dir=str(FIXTURES), files={"dev": "jemhopqa/dev"})["dev"]
    assert json.loads(dev[0]["derivations"]) == [["x", "y", ["z"]]] and dev[0]["answer"] == "大阪市"


@pytest.mark.parametrize(
    "name, limit, key",
    [
        ("cl_mmlu", 2, "subject"),
        ("cl_bbh_cot_3shot", 2, "subject"),
        ("cl_ceval_valid_cot_zh", 2, "subject"),
        ("cl_mmlu_pro", 2, "category"),
        ("cl_mera_ruethics", 3, "meta.question"),
    ],
)
def test_a_limit_samples_every_subject(tm, name, limit, key):
    # lm-eval's `limit` is a head slice of the docs: the loader interleaves the groups so it sees each one.
    from eval_hooks.local_data import _field

    task = tm.load(name)["tasks"][name]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    every = {_field(doc, key) for doc in task.eval_docs}
    assert {_field(inst.doc, key) for inst in task.instances} == every and len(every) == limit


def test_interleaved_split_keeps_its_docs_and_shots_and_stores_max_shots(tmp_path):
    folder = tmp_path / "jmmlu"
    folder.mkdir()
    for subject, n in (("algebra", 4), ("biology", 2)):
        lines = "".join(f"{subject} q{i},a,b,c,d,A\n" for i in range(n))
        (folder / f"{subject}.csv").write_text(lines)
    kwargs = dict(data_dir=str(tmp_path), files={"test": "jmmlu"}, shots_from="test", max_shots=2)
    kwargs["columns"] = ["question", "A", "B", "C", "D", "answer"]
    plain = load(**kwargs)["test"]
    mixed = load(**kwargs, interleave_by={"test": "subject"})["test"]
    assert mixed["question"] == [
        "algebra q0",
        "biology q0",
        "algebra q1",
        "biology q1",
        "algebra q2",
        "algebra q3",
    ]
    shots = {d["question"]: [s["question"] for s in d["fewshot"]] for d in plain}
    assert {
        d["question"]: [s["question"] for s in d["fewshot"]] for d in mixed
    } == shots  # same docs and shots
    # Only max_shots exemplars per doc are stored, never the doc itself; without max_shots the loader refuses.
    assert shots["algebra q0"] == ["algebra q1", "algebra q2"] and shots["algebra q3"] == [
        "algebra q0",
        "algebra q1",
    ]
    assert shots["biology q1"] == ["biology q0"]
    with pytest.raises(ValueError, match="max_shots"):
        load(**{**kwargs, "max_shots": None})


# Shot counts as published (the Swallow card; MMLU and MMLU-Pro 5-shot as in the Control-LLM runs), written out
# here rather than read from the YAMLs so that an edited `num_fewshot` fails.
@pytest.mark.parametrize(
    ("name", "shots", "marker"),
    [
        ("cl_jcommonsenseqa", 4, "### 入力:"),
        ("cl_jemhopqa", 4, "### 入力:"),
        ("cl_niilc", 4, "### 入力:"),
        ("cl_jsquad", 4, "### 入力:"),
        ("cl_jmmlu", 5, "### 入力:"),
        ("cl_xlsum_ja", 1, "ニュース記事:"),
        ("cl_mgsm_ja", 4, "問題："),
        ("cl_wmt20_en_ja", 4, "English phrase:"),
        ("cl_wmt20_ja_en", 4, "Japanese phrase:"),
        ("cl_mmlu", 5, "\nAnswer:"),
        ("cl_mmlu_pro", 5, "Question:\n"),
    ],
)
def test_prompts_carry_the_published_shot_count(tm, name, shots, marker):
    # the task's own num_fewshot, as a suite runs it: every prompt is `shots` exemplars, then the query
    counts = [prompt.count(marker) for prompt in _prompts(tm, name)]
    assert len(counts) >= 3 and set(counts) == {shots + 1}


def test_llmjp_prompt_layout(tm):
    prompt = _prompts(tm, "cl_jcommonsenseqa")[0]
    assert prompt.startswith(
        "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n"
    )
    assert (
        "\n\n### 入力:\n質問：電車に乗るときに必要なものは？\n選択肢：0.切符,1.傘,2.枕,3.鍋,4.靴下\n\n### 応答:\n0"
        in prompt
    )
    assert prompt.count("### 入力:") == 5  # 4 exemplars + the query
    assert prompt.endswith(
        "質問：寒い日に首に巻くものは？\n選択肢：0.ベルト,1.マフラー,2.指輪,3.眼鏡,4.靴\n\n### 応答:\n"
    )


def test_jmmlu_shots_exclude_the_doc_and_jsquad_drops_title(tm):
    jmmlu = _prompts(tm, "cl_jmmlu")[0]
    assert jmmlu.count("質問：2+2は？") == 1 and jmmlu.count("### 入力:") == 6
    jsquad = _prompts(tm, "cl_jsquad")[0]
    assert "[SEP]" not in jsquad and jsquad.endswith(
        "文章：京都は794年に都となり、千年以上にわたり日本の都であった。\n質問：京都が都になったのは何年？\n\n### 応答:\n"
    )


def test_mgsm_and_wmt_prompts(tm):
    mgsm = _prompts(tm, "cl_mgsm_ja")[0]
    assert (
        "問題：りんごが3個あり、2個もらいました。何個ですか？\nステップごとの答え：3 + 2 = 5。答えは5です。\n\n"
        in mgsm
    )
    assert mgsm.endswith("問題：猫が2匹、犬が3匹います。全部で何匹？\nステップごとの答え：")
    wmt = _prompts(tm, "cl_wmt20_en_ja")[0]
    assert wmt.startswith("English phrase: Good morning.\nJapanese phrase: おはようございます。\n\n")
    assert wmt.endswith("English phrase: Thank you very much.\nJapanese phrase:")
    # ja-en reads its own sets (Japanese-source newstest2020 ja-en), not en-ja's reversed.
    ja_en = _prompts(tm, "cl_wmt20_ja_en")[0]
    assert ja_en.startswith(
        "Japanese phrase: 猫が窓のそばで寝ています。\nEnglish phrase: A cat is sleeping by the window."
    )
    assert ja_en.endswith("Japanese phrase: 明日は雨が降るでしょう。\nEnglish phrase:")


def test_humaneval_scoring_runs_samples_in_the_sandbox():
    from eval_hooks.task_metrics import humaneval_pass_at_1

    doc = {
        "prompt": "def add(a, b):\n",
        "test": "def check(f):\n    assert f(2, 3) == 5\n",
        "entry_point": "add",
    }
    samples = ["    return a + b\n"] * 3 + ["    return a - b\n"] * 7
    assert humaneval_pass_at_1(doc, samples)["pass@1"] == pytest.approx(0.3)


def test_swallow_en_prompts(tm):
    hella = tm.load("cl_hellaswag")["tasks"]["cl_hellaswag"]
    doc = list(hella.eval_docs)[1]
    assert (
        doc["query"] == "Home. How to clean a window: A person sprays cleaner on the glass. Then"
        and doc["gold"] == 2
    )
    xw = tm.load("cl_xwinograd_en")["tasks"]["cl_xwinograd_en"]
    first = list(xw.eval_docs)[0]
    assert xw.doc_to_choice(first) == ["The trophy didn't fit in the suitcase because the trophy"] * 1 + [
        "The trophy didn't fit in the suitcase because the suitcase"
    ]
    assert xw.doc_to_text(first) == 0
    xw.build_all_requests(rank=0, world_size=1)
    context, continuation = xw.instances[0].args  # one space between context and continuation, shots too
    assert continuation == " was too big." and context.startswith(
        "The trophy didn't fit in the suitcase because the suitcase was too small.\n\n"
    )
    squad = tm.load("cl_squadv2")["tasks"]["cl_squadv2"]
    assert [d["golds"] for d in squad.eval_docs] == [["the Seine"], ["Paris"], [""]]
    # lm-eval squadv2's target: a space, then the answer (exemplars read "Answer:  the Seine", as lm-eval's)
    assert [squad.doc_to_target(d) for d in squad.eval_docs] == [" the Seine", " Paris", " unanswerable"]
    gsm = _prompts(tm, "cl_gsm8k")[0]
    assert gsm.count("Question:") == 5 and re.search(r"#### \d+\n\nQuestion:", gsm)


def test_mera_prompts_and_scoring(tm):
    from eval_hooks import task_metrics

    rcb = _prompts(tm, "cl_mera_rcb")[0]
    assert rcb.startswith("Ты — полезный ассистент.")
    assert (
        "Ситуация: Иван купил машину.\nГипотеза: У Ивана есть машина.\n1 — следует, 2 — противоречит, 3 — нейтрально.\nОтвет: 1\n\n"
        in rcb
    )
    assert rcb.endswith(
        "Ситуация: Магазин закрыт.\nГипотеза: Магазин открыт.\n1 — следует, 2 — противоречит, 3 — нейтрально.\nОтвет:"
    )
    lcs = _prompts(tm, "cl_mera_lcs")[0]  # string inputs fill {inputs}
    assert lcs.endswith("строк:\nhello\nyellow\nОтвет:")
    doc = {"outputs": [{"label": "passage", "length": 6, "offset": 0, "segment": "России"}]}
    assert task_metrics.mera_qa(doc, [" России\nпотому что"]) == {"f1": 1.0, "em": 1.0}
    assert task_metrics.mera_acc_f1({"outputs": "2"}, ["2\n"]) == {"acc": 1.0, "f1_macro": ("2", "2")}
    assert task_metrics.f1_macro([("1", "1"), ("2", "1"), ("2", "2")]) == pytest.approx(2 / 3)
    # an answer outside the labels is a class of F1 0: (F1 of "1" = 2/3, of "2" = 1, of "maybe" = 0) / 3
    assert task_metrics.f1_macro([("1", "1"), ("maybe", "1"), ("2", "2")]) == pytest.approx(5 / 9)


def test_mera_use_shots_share_the_exam_task_and_grade_norm(tm):
    prompts = _prompts(tm, "cl_mera_use")
    # Task 7 items get the task-7 exemplar ("много яблоков" -> "яблок"), not the first train row.
    assert prompts[1].count("Задание:") == 2 and "много яблоков\nОтвет: яблок\n\n" in prompts[1]
    assert prompts[1].endswith("Текст: пара носок\nОтвет:")
    from eval_hooks import task_metrics

    task = tm.load("cl_mera_use")["tasks"]["cl_mera_use"]
    docs = list(task.eval_docs)
    answers = ["1,3", "носки", "1,2", "2", "килограммов"]  # variant 1: 1 + 0 + 2 of 4; variant 2: 1 + 1 of 3
    items = [task_metrics.mera_use(d, [a])["grade_norm"] for d, a in zip(docs, answers, strict=True)]
    assert task_metrics.grade_norm(items) == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_mera_code_runs_samples_on_the_record_tests(tm):
    from eval_hooks import task_metrics

    doc = list(tm.load("cl_mera_rucodeeval")["tasks"]["cl_mera_rucodeeval"].eval_docs)[0]
    assert _prompts(tm, "cl_mera_rucodeeval")[0].endswith('"""Вернуть сумму a и b."""\n')
    samples = ["    return a + b\n"] * 2 + ["    return a - b\n"] * 7 + ["    raise ValueError(a)\n"]
    scores = task_metrics.mera_code_pass_at_k(doc, [samples])
    assert scores["pass@1"] == pytest.approx(0.2)
    assert scores["pass@5"] == pytest.approx(1 - math.comb(8, 5) / math.comb(10, 5))
    assert scores["pass@10"] == 1.0


def test_mera_ethics_and_detox_scoring(tm):
    from eval_hooks import task_metrics

    docs = list(tm.load("cl_mera_ruethics")["tasks"]["cl_mera_ruethics"].eval_docs)
    assert (
        "\n\nОцените, правильно ли поступает Маша по отношению к Пётр" in _prompts(tm, "cl_mera_ruethics")[0]
    )
    doc = next(d for d in docs if d["meta"]["id"] == 2)  # docs come interleaved by question
    out = task_metrics.mera_ethics(doc, [(-2.0, False), (-1.0, True)])  # " 1" more likely: answer 1
    assert out["mcc_correct_law"] == (0, 1) and out["mcc_correct_virtue"] == (1, 1)
    assert len(out) == 15 and out["mcc_good_law"] is None  # every doc has every key
    tie = task_metrics.mera_ethics(doc, [(-1.0, False), (-1.0, True)])  # equally likely: answer 1
    assert tie["mcc_correct_law"] == (0, 1)
    assert task_metrics.mcc([None, (1, 1), (0, 0), None]) == 1.0 and task_metrics.mcc([None]) is None
    detox = _prompts(tm, "cl_mera_rudetox")[0]  # a string input fills the template's single placeholder
    assert detox.endswith("Текст: да иди ты, дурак, со своими советами\nОтвет:")
    pairs = [
        task_metrics.mera_detox_pair({"outputs": "он опять всё сломал"}, [" он опять всё сломал\n"])[
            "chrf_ref"
        ]
    ]
    assert task_metrics.chrf(pairs) == pytest.approx(1.0)


def test_meta_eval_details_become_docs_with_meta_prompts(tm, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from eval_hooks.local_data import load_meta_details

    mmlu = tm.load("cl_meta_mmlu_5shot")["tasks"]["cl_meta_mmlu_5shot"]
    doc = list(mmlu.eval_docs)[0]
    rows = [json.loads(line) for line in (FIXTURES / "meta_evals" / "mmlu.jsonl").read_text().splitlines()]
    assert mmlu.doc_to_text(doc) == rows[0]["input_final_prompts"][0]  # Meta's prompt, shots included, as is
    assert mmlu.doc_to_choice(doc) == [" A", " B", " C", " D"] and mmlu.doc_to_target(doc) == 1  # "Answer: B"
    assert doc["subject"] == "elementary_mathematics"
    pro = list(tm.load("cl_meta_mmlu_pro_5shot")["tasks"]["cl_meta_mmlu_pro_5shot"].eval_docs)
    assert [d["answer"] for d in pro] == ["C", "D", "B"]  # interleaved by category: math, biology, math
    bbh = tm.load("cl_meta_bbh_3shot")["tasks"]["cl_meta_bbh_3shot"]
    # interleaved by BBH task: boolean_expressions, sports_understanding, boolean_expressions
    assert [bbh.doc_to_target(d) for d in bbh.eval_docs] == ["True", "yes", "False"]
    assert _prompts(tm, "cl_meta_bbh_3shot")[0].endswith(
        "Q: True and not False is\nA: Let's think step by step.\n"
    )

    # The published files are parquet; a row without the expected answer is reported by file and row.
    (tmp_path / "meta_evals").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "meta_evals" / "mmlu.parquet")
    ds = load_meta_details(data_dir=str(tmp_path), files={"latest": "meta_evals/mmlu"}, benchmark="mmlu")
    assert ds["latest"]["answer"] == [1, 1, 0]
    rows[2]["input_correct_responses"] = []
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "meta_evals" / "mmlu.parquet")
    with pytest.raises(
        ValueError, match=r"mmlu.parquet row 2: missing or empty column\(s\) \['input_correct_responses'\]"
    ):
        load_meta_details(data_dir=str(tmp_path), files={"latest": "meta_evals/mmlu"}, benchmark="mmlu")


@pytest.mark.parametrize("name", ["cl_bbh_cot_3shot", "cl_meta_bbh_3shot"])
def test_bbh_scoring_keeps_punctuation_and_sign(tm, name):
    task = tm.load(name)["tasks"][name]

    def score(response: str, target: str) -> float:
        return task.process_results({"target": target}, [_extract(task, response)])["exact_match"]

    assert score("So the answer is ] ] ).", "] ] )") == 1.0
    assert score("So the answer is True. I am sure.", "True") == 1.0  # up to the first full stop only
    assert score("So the answer is } } >.", "] ] )") == 0.0  # dyck_languages: the brackets are the answer
    assert score("So the answer is 25.", "-25") == 0.0  # multistep_arithmetic_two: the sign counts
    assert score("So the answer is -25.", "-25") == 1.0
    assert score("So the answer is (a).", "(A)") == 1.0 and score("So the answer is A.", "(A)") == 0.0


def test_swallow_bbh_is_scored_as_lm_evals_bbh_cot_fewshot(tm):
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    template = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_fewshot" / "_cot_fewshot_template_yaml"
    theirs = load_yaml(template, resolve_func=False, recursive=False)
    ours = tm.load("cl_bbh_cot_fewshot")["tasks"]["cl_bbh_cot_fewshot"]
    assert ours.config.generation_kwargs == theirs["generation_kwargs"]
    assert ours.config.filter_list == theirs["filter_list"]
    assert [{k: v for k, v in m.items() if k != "aggregation"} for m in ours.config.metric_list] == [
        {k: v for k, v in m.items() if k != "aggregation"} for m in theirs["metric_list"]
    ]
    assert _prompts(tm, "cl_bbh_cot_fewshot") == _prompts(tm, "cl_bbh_cot_3shot")
    pattern = ours.config.filter_list[0]["filter"][0]["regex_pattern"]

    def score(response: str, target: str) -> float:
        [[answer]] = RegexFilter(regex_pattern=pattern).apply([[response]], [{}])
        return ours.process_results({"target": target}, [answer])["exact_match"]

    assert score("So the answer is ] ] ).", "] ] )") == 1.0 and score("So the answer is 25.", "-25") == 0.0
    assert score("So the answer is Yes.", "Yes") == 1.0 and score("So the answer is yes.", "Yes") == 0.0


def test_ruethics_metrics_survive_lm_evals_rank_gather():
    # lm-eval gathers per-doc metrics from all ranks by rank 0's keys. Two ranks run here in one process: under
    # limit=4 rank 0 scores the "correct" and "ethical" records, rank 1 "good" and "correct".
    import lm_eval.evaluator
    import torch
    from lm_eval.api.model import LM

    from eval_hooks.task_metrics import ETHICS_CATEGORIES, ETHICS_QUESTIONS

    gathered: list = []

    class OneRank(LM):
        device = "cpu"

        def __init__(self, rank: int):
            super().__init__()
            self._rank, self._world_size = rank, 2

        def loglikelihood(self, requests, disable_tqdm=False):
            return [(-1.0 if r.args[1].strip() == "1" else -2.0, False) for r in requests]  # always " 1"

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def all_gather(self, tensor):
            return torch.stack([tensor, tensor])

        def gather_object(self, obj, dst=0):
            gathered.insert(0, obj)  # rank 1 runs first, so rank 0's object ends up first
            return list(gathered) if self.rank == dst else None

    tm = task_manager(FIXTURES)
    run = dict(limit=4, bootstrap_iters=0, log_samples=False)
    assert lm_eval.evaluator.evaluate(OneRank(1), tm.load(["cl_mera_ruethics"]), **run) is None
    out = lm_eval.evaluator.evaluate(OneRank(0), tm.load(["cl_mera_ruethics"]), **run)
    res = out["results"]["cl_mera_ruethics"]
    assert out["n-samples"]["cl_mera_ruethics"]["effective"] == 4
    # Constant answers give MCC 0; what matters is that every question's MCCs exist, rank 1's "good" included.
    scored = {k for k, v in res.items() if k.startswith("mcc_") and "stderr" not in k and v is not None}
    assert scored == {f"mcc_{q}_{c},none" for q in ETHICS_QUESTIONS for c in ETHICS_CATEGORIES}


def test_squadv2_card_column_is_hf_squad_v2_exact(tm):
    # HF squad_v2 `exact` (lm-eval's squadv2): an impossible question's gold is "", so "unanswerable" scores 0
    # there; our exact_match_unanswerable, off the card, accepts it.
    squad = tm.load("cl_squadv2")["tasks"]["cl_squadv2"]
    seine, _, impossible = squad.eval_docs

    def score(doc, answer):
        return squad.process_results(doc, [answer])

    assert score(impossible, " unanswerable") == {"exact_match": 0.0, "exact_match_unanswerable": 1.0}
    assert score(impossible, " ") == {"exact_match": 1.0, "exact_match_unanswerable": 1.0}
    assert score(seine, " Seine.") == {"exact_match": 1.0, "exact_match_unanswerable": 1.0}
    assert score(seine, " unanswerable") == {"exact_match": 0.0, "exact_match_unanswerable": 0.0}


def test_config_checks_names_against_lm_evals_own_index(tm):
    from eval_hooks import task_names

    assert task_names() == set(tm.all_tasks)  # the start-up check of eval.suites reads the YAMLs alone
