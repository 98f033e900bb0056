"""Local benchmark files for our lm-eval tasks: `custom_dataset` loaders and a per-subject few-shot sampler.

A task YAML names files relative to the data dir; the data dir arrives through lm-eval's task metadata
(`TaskManager(metadata={"data_dir": ...})` or `lm_eval --metadata '{"data_dir": ...}'`), so the YAMLs
stay free of machine paths and work both from our runner and from the lm_eval CLI.
"""

from __future__ import annotations

import csv
import io
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import datasets
from lm_eval.api.samplers import ContextSampler

from eval_hooks.prompts import LETTERS
from eval_hooks.task_metrics import ETHICS_CATEGORIES, ETHICS_QUESTIONS

SHOTS_FIELD = "fewshot"  # per-doc list of its few-shot exemplars, filled by `load`
HEADER_FIELD = "header"  # per-doc task description (subject header or BBH CoT exemplars), filled by `load`
_SUFFIXES = (".jsonl", ".json", ".csv", ".xml", ".parquet")


def _squad_rows(data: dict) -> list[dict[str, Any]]:
    # SQuAD-v1 nesting (JSQuAD): data[].paragraphs[].qas[] -> one row per question.
    return [
        {"title": article.get("title", ""), "context": para["context"], **qa}
        for article in data["data"]
        for para in article["paragraphs"]
        for qa in para["qas"]
    ]


def _niilc_rows(path: Path) -> list[dict[str, Any]]:
    # NIILC XML: <question id><text>Q</text><answers><answer>A</answer>...</answers>...</question>
    import xml.etree.ElementTree as ET

    return [
        {
            "id": q.get("id"),
            "text": q.findtext("text"),
            "answers": [a.text or "" for a in q.iter("answer")],
        }
        for q in ET.parse(path).getroot().iter("question")
    ]


def _unwrapped(data: dict, path: Path) -> list[dict[str, Any]]:
    # SQuAD's data[].paragraphs[].qas[] and BBH's examples[] wrap their rows; any other object is one row, as a
    # one-line JGLUE file (JSON lines under a .json name) parses.
    articles, examples = data.get("data"), data.get("examples")
    if isinstance(articles, list) and all(isinstance(a, dict) and "paragraphs" in a for a in articles):
        try:
            return _squad_rows(data)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: not SQuAD's data[].paragraphs[].qas[] nesting ({type(e).__name__}: {e})"
            ) from None
    if isinstance(examples, list):
        return examples
    return [data]


def _json_lines(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i + 1}: not JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {i + 1}: not a JSON object")
            rows.append(row)
    return rows


def read_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a benchmark file: .jsonl; .json (array, BBH {"examples"}, SQuAD nesting, JSON lines as in JGLUE, or
    one object, one row); .csv with a header, or headerless when `columns` names them (JMMLU); NIILC .xml;
    .parquet."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8-sig") if path.suffix != ".xml" else ""  # Excel writes a BOM
    if path.suffix == ".jsonl":
        return _json_lines(path, text)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # not JGLUE's JSON lines under a .json name (a second value follows)
                raise ValueError(f"{path} line {e.lineno}: not JSON ({e.msg})") from e
            return _json_lines(path, text)
        if isinstance(data, dict):
            return _unwrapped(data, path)
        return data
    if path.suffix == ".csv":
        stream = io.StringIO(text, newline="")  # quoted fields (XL-Sum articles) may span lines
        return list(csv.DictReader(stream, fieldnames=columns))
    if path.suffix == ".xml":
        return _niilc_rows(path)
    raise ValueError(f"unsupported benchmark file {path} (expected one of {_SUFFIXES})")


def _subject(stem: str, split: str) -> str:
    # Official per-subject layouts name files `<subject>.csv` or `<subject>_<split>.csv` (C-Eval's zip).
    return stem.removesuffix(f"_{split}")


def _existing(path: Path) -> Path:
    # A YAML names `mmlu/test`; the data dir may hold `mmlu/test/` (per-subject files) or `mmlu/test.jsonl`.
    for candidate in (path, *(path.with_name(path.name + s) for s in _SUFFIXES)):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"benchmark data not found: {path}[/|.jsonl|.json|.csv] (see docs/eval.md)")


# Multiple-choice rows by benchmark folder (docs/eval.md, "Data layout"): the fields the prompt reads as is
# (a per-subject file's name gives its subject); the choices, a field holding their list or one column per
# option; the answer field and its form; how many choices the prompt shows (None: any number).
_CHOICE_ROWS = {
    "mmlu": (["question", "subject"], "choices", "answer", "index", 4),
    "mmlu_pro": (["question", "category"], "options", "answer", "letter", None),
    "ceval": (["question"], list("ABCD"), "answer", "letter", None),
    "cmmlu": (["Question"], list("ABCD"), "Answer", "letter", None),
    "jmmlu": (["question"], list("ABCD"), "answer", "letter", None),
    "jcommonsenseqa": (["question"], [f"choice{i}" for i in range(5)], "label", "index", None),
}


# The fields the other tasks' prompts and scorers read (dotted paths; `a[].b`: `a` is a non-empty list whose every
# element has `b`), by benchmark folder; per split where the splits differ (MGSM's exemplars show the worked
# answer, its test rows are scored on the number).
_FIELDS: dict[str, list[str] | dict[str, list[str]]] = {
    "bbh": ["input", "target"],
    "gsm8k": ["question", "answer"],
    "squadv2": ["context", "question", "answers"],
    "jsquad": ["context", "question", "answers"],
    "triviaqa": ["question", "answer.value", "answer.aliases"],
    "humaneval": ["prompt", "test", "entry_point"],
    "jhumaneval": ["prompt", "test", "entry_point"],
    "mgsm_ja": {"train": ["question", "answer"], "test": ["question", "answer_number"]},
    "jemhopqa": ["question", "answer"],
    "niilc": ["text", "answers"],
    "xlsum_ja": ["text", "summary"],
    "wmt20_en_ja": ["translation.en", "translation.ja"],
    "wmt20_ja_en": ["translation.en", "translation.ja"],
    "hellaswag": ["activity_label", "ctx_a", "ctx_b", "endings", "label"],
    "openbookqa": ["question_stem", "choices.text", "choices.label", "answerKey"],
    "xwinograd": ["sentence", "option1", "option2", "answer"],
}
# MERA records ({instruction, inputs, outputs, meta}), and what some tasks' scorers read inside them (the other
# tasks' scorers read `outputs` as a whole, as a string).
_MERA_FIELDS = ["instruction", "inputs", "outputs", "meta"]
_MERA_EXTRA = {
    "use": ["meta.id_task", "meta.type", "meta.variant"],
    "rucodeeval": ["inputs.function", "inputs.tests", "meta.entry_point"],
    "ruhumaneval": ["inputs.function", "inputs.tests", "meta.entry_point"],
    "ruethics": ["meta.question", *(f"outputs.{c}" for c in ETHICS_CATEGORIES)],
    "multiq": ["outputs[].segment"],
}


def _lacks(row: Any, path: str) -> bool:
    """Whether `row` lacks the field at `path` (absent or null; see `_FIELDS` for `a[].b`)."""
    head, listed, rest = path.partition("[].")
    if listed:
        items = _field(row, head)
        return not isinstance(items, list) or not items or any(_lacks(item, rest) for item in items)
    return _field(row, path) is None


def _mera_value_error(task: str, row: dict) -> str | None:
    """What in a MERA record its scorer would fail on or silently mis-score (a failure there names no file or
    row); None if nothing."""
    import ast

    if task == "ruethics":
        if row["meta"]["question"] not in ETHICS_QUESTIONS:
            return f"meta.question is {row['meta']['question']!r}, expected one of {list(ETHICS_QUESTIONS)}"
        bad = {c: row["outputs"][c] for c in ETHICS_CATEGORIES if str(row["outputs"][c]) not in ("0", "1")}
        return f"outputs labels {bad} are not 0 or 1" if bad else None
    if task in ("rucodeeval", "ruhumaneval"):
        try:
            cases = ast.literal_eval(row["inputs"]["tests"])
        except (ValueError, SyntaxError, TypeError) as e:
            return f"inputs.tests is not a Python literal ({type(e).__name__}: {e})"
        if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
            return "inputs.tests must be a list of {argument: value} dicts"
        outputs = row["outputs"]
        if not isinstance(outputs, list) or len(outputs) != len(cases):
            return f"outputs must list one expected result per test case ({len(cases)}), got {outputs!r}"
    return None


def required_fields(rel: str, split: str) -> list[str]:
    """The fields every row of split `split`, read from `rel` under the data dir, must hold (not null)."""
    parts = Path(rel).parts
    if parts[0] == "mera":
        return _MERA_FIELDS + _MERA_EXTRA.get(parts[1] if len(parts) > 2 else "", [])
    if parts[0] in _CHOICE_ROWS:
        text, options, answer, _, _ = _CHOICE_ROWS[parts[0]]
        return [*text, *([options] if isinstance(options, str) else options), answer]
    fields = _FIELDS.get(parts[0], [])
    return fields.get(split, []) if isinstance(fields, dict) else fields


def check_rows(rows: list[dict], rel: str, split: str, path: Path) -> list[dict]:
    """`rows` of `path`, refused naming the row and field where one lacks a field its prompt or scorer reads
    (it would render "None" or be scored against nothing), or where a multiple-choice answer would silently
    score as wrong. Every rank reads all rows, so a bad one stops every rank alike, before any scoring."""
    fields = required_fields(rel, split)
    for i, row in enumerate(rows):
        missing = [k for k in fields if _lacks(row, k)]
        if missing:
            raise ValueError(f"{path} row {i}: missing field(s) {missing} ({rel} rows need {fields})")
    if Path(rel).parts[0] == "mera":
        from eval_hooks.prompts import mera_prompt

        task = Path(rel).parts[1] if len(Path(rel).parts) > 2 else ""
        for i, row in enumerate(rows):
            try:
                mera_prompt(row)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    f"{path} row {i}: the instruction does not render with its inputs ({type(e).__name__}: {e})"
                ) from None
            error = _mera_value_error(task, row)
            if error:
                raise ValueError(f"{path} row {i}: {error}")
    return _check_choices(rows, Path(rel).parts[0], path)


def _check_choices(rows: list[dict], benchmark: str, path: Path) -> list[dict]:
    """Multiple-choice rows whose choices are given as one string, or whose answer is out of range, are
    refused (they would render or score wrongly)."""
    if benchmark not in _CHOICE_ROWS:
        return rows
    _, options, answer, form, count = _CHOICE_ROWS[benchmark]
    listed = isinstance(options, str)
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        choices = row[options] if listed else [row[k] for k in options]
        if listed and (
            not isinstance(choices, list)
            or not all(isinstance(c, str) for c in choices)
            or count not in (None, len(choices))
        ):
            what = f"{count} strings" if count else "strings"
            raise ValueError(f"{where}: field {options!r} must be a list of {what}, got {choices!r}")
        valid = list(range(len(choices))) if form == "index" else list(LETTERS[: len(choices)])
        gold = row[answer]
        if gold not in valid or type(gold) is not type(valid[0]):  # True == 1 == 1.0, but only 1 is an index
            raise ValueError(f"{where}: field {answer!r} is {gold!r}, expected one of {valid}")
    return rows


def read_split(
    data_dir: Path, rel: str, split: str, subject_field: str, columns: list[str] | None = None
) -> list[dict]:
    """Split `split` from `rel` under `data_dir`: a file, or a folder of per-subject files (the subject is
    taken from the name); every file's rows are checked (`check_rows`, then `check_types` over the split)."""
    path = _existing(data_dir / rel)
    if path.is_file():
        rows = check_rows(read_rows(path, columns), rel, split, path)
        return check_types(rows, [(path, i) for i in range(len(rows))], rel, split)
    rows, origins = [], []
    for file in sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES):
        subject = _subject(file.stem, split)
        read = [{**row, subject_field: subject} for row in read_rows(file, columns)]
        rows += check_rows(read, rel, split, file)
        origins += [(file, i) for i in range(len(read))]
    return check_types(rows, origins, rel, split)


def _kinds(value: Any, path: str):
    """(path, type name, value) of `value` and of everything nested in it (`a.b` in dicts, `a[]` in lists)."""
    if value is None:
        return
    yield path, type(value).__name__, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _kinds(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _kinds(item, f"{path}[]")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mixed_type_error(
    key: str, rows: list[dict], origins: list[tuple[Path, int]], error: Exception
) -> ValueError:
    # The first value whose type differs from the first one seen at its path (row 0's, unless row 0 lacks it).
    first: dict[str, tuple[str, Any, tuple[Path, int]]] = {}
    for row, (file, i) in zip(rows, origins, strict=True):
        for path, kind, value in _kinds(row.get(key), key):
            seen_kind, seen, (seen_file, j) = first.setdefault(path, (kind, value, (file, i)))
            if kind != seen_kind and {kind, seen_kind} != {"int", "float"}:  # Arrow reads ints among floats
                where = "" if seen_file == file else f"{seen_file} "
                return ValueError(
                    f"{file} row {i}: field {path!r} is {kind} {_short(value)}, but {where}row {j} has"
                    f" {seen_kind} {_short(seen)}; give it one type in every row (here {seen_kind})"
                )
    return ValueError(
        f"{origins[0][0]}: field {key!r} cannot be read as one column ({type(error).__name__}: {error})"
    )


def check_types(rows: list[dict], origins: list[tuple[Path, int]], rel: str, split: str) -> list[dict]:
    """`rows` of one split (from `origins`: file, row) with every column of one type, as a Dataset needs. A
    column its prompt or scorer reads (`required_fields`) whose rows mix types is refused, naming the first row
    that differs: Arrow cannot type it, and as JSON text its values would be scored as text (PARus's gold
    '"1"'). An unread column that mixes types (JEMHopQA's `derivations`, lists of strings and lists) becomes
    JSON text."""
    import pyarrow as pa

    read = {re.split(r"[.\[]", f, maxsplit=1)[0] for f in required_fields(rel, split)}
    for key in dict.fromkeys(k for row in rows for k in row):
        try:
            pa.array([row.get(key) for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            if key in read:
                raise _mixed_type_error(key, rows, origins, e) from None
            for row in rows:
                if key in row:
                    row[key] = json.dumps(row[key], ensure_ascii=False)
    return rows


@cache
def lm_eval_headers(benchmark: str) -> dict[str, str]:
    """{subject: description} from lm-eval's own per-subject YAMLs (e.g. C-Eval's Chinese subject names)."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    folder = Path(lm_eval.__file__).parent / "tasks" / benchmark
    configs = (load_yaml(p, resolve_func=False, recursive=False) for p in sorted(folder.glob("*.yaml")))
    return {
        c["dataset_name"]: c["description"] for c in configs if "dataset_name" in c and "description" in c
    }


def _header(subject: str, headers: dict[str, str], prompts: Path | None) -> str:
    if prompts is not None:
        # BBH cot-prompts/<task>.txt: a canary line, "-----", then the description and the 3 CoT exemplars.
        text = (prompts / f"{subject}.txt").read_text(encoding="utf-8")
        return text.split("-----\n", 1)[-1].strip() + "\n\n"
    if subject not in headers:
        raise KeyError(f"no prompt header for subject {subject!r}")
    return headers[subject]


def interleave(rows: list[dict], key: str) -> list[dict]:
    """Rows round-robin over their groups by `key` (a dotted path): groups in first-seen order, rows in file
    order within a group. The same rows, but a head slice (lm-eval's `limit`) now samples every group."""
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        groups.setdefault(_field(row, key), []).append(row)
    depth = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(depth) for g in groups.values() if i < len(g)]


def _interleaved(
    splits: dict[str, list[dict]], interleave_by: dict[str, str] | None
) -> dict[str, list[dict]]:
    for name, key in (interleave_by or {}).items():
        if name not in splits:
            raise KeyError(f"interleave_by names split {name!r}; the task's splits are {sorted(splits)}")
        splits[name] = interleave(splits[name], key)
    return splits


def _attach_shots(
    splits: dict[str, list[dict]], shots_from: str, shots_by: str, max_shots: int | None
) -> None:
    pool: dict[Any, list[dict]] = {}
    for row in splits[shots_from]:
        pool.setdefault(_field(row, shots_by), []).append(row)

    def shots(row: dict) -> list[dict]:
        # The first max_shots + 1 candidates hold max_shots others even when the doc is among them.
        head = pool.get(_field(row, shots_by), [])[: None if max_shots is None else max_shots + 1]
        return [r for r in head if r is not row][:max_shots]

    for name, rows in list(splits.items()):
        if name != shots_from or len(splits) == 1:
            # A single split (JMMLU, XWinograd) gives each doc the other docs of its subject as exemplars.
            splits[name] = [{**row, SHOTS_FIELD: shots(row)} for row in rows]


def load(
    data_dir: str | None = None,
    files: dict[str, str] | None = None,
    shots_from: str | None = None,
    shots_by: str = "subject",
    max_shots: int | None = None,
    headers_from_lm_eval: str | None = None,
    headers_dir: str | None = None,
    columns: list[str] | None = None,
    interleave_by: dict[str, str] | None = None,
    **_: Any,
) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: read `files` ({split: path under data_dir}). With `shots_from`, attach to
    every doc the exemplars of that split sharing its `shots_by` value (a dotted path), in file order (never the doc
    itself), at most `max_shots` of them (required when `shots_from` is the only split); with
    `headers_from_lm_eval` or `headers_dir`, a per-subject `header` column for the task's description; `columns`
    names the fields of headerless CSV files; `interleave_by` ({split: dotted path}) reorders an eval split
    round-robin over its groups (see `interleave`) once the exemplars are attached (never name a split that
    lm-eval's own samplers draw exemplars from)."""
    if not data_dir:
        raise ValueError(
            "no data_dir: pass metadata={'data_dir': ...} to the TaskManager (or lm_eval --metadata)"
        )
    if not files:
        raise ValueError("the task YAML must list `files` under dataset_kwargs")
    if shots_from is not None and len(files) == 1 and max_shots is None:
        raise ValueError(
            "shots from the eval split itself need `max_shots` (each doc would carry its subject)"
        )
    splits = {name: read_split(Path(data_dir), rel, name, shots_by, columns) for name, rel in files.items()}
    if shots_from is not None:
        _attach_shots(splits, shots_from, shots_by, max_shots)
    if headers_from_lm_eval or headers_dir:
        headers = lm_eval_headers(headers_from_lm_eval) if headers_from_lm_eval else {}
        prompts = Path(data_dir) / headers_dir if headers_dir else None
        for rows in splits.values():
            for row in rows:
                row[HEADER_FIELD] = _header(row[shots_by], headers, prompts)
    splits = _interleaved(splits, interleave_by)
    return datasets.DatasetDict({name: _to_dataset(rows) for name, rows in splits.items()})


# --- Meta's published eval details (meta-llama/Llama-3.1-8B-evals, "<task>__details" subsets) -------------------

_META_REQUIRED = ("input_final_prompts", "input_correct_responses")
_LETTER = re.compile(r"[A-J]")


def _meta_gold_letter(response: str, where: str) -> str:
    # Gold answers come as "B", "(B)" or "Answer: B" depending on the task: the last capital A-J is the letter.
    letters = _LETTER.findall(response)
    if not letters:
        raise ValueError(f"{where}: no answer letter A-J in input_correct_responses {response!r}")
    return letters[-1]


def meta_details_doc(row: dict, benchmark: str, where: str) -> dict[str, Any]:
    """One eval-details row as a doc of our Meta-prompt tasks: `prompt` (Meta's rendered prompt, shots included),
    `subject` (from `subtask_name`), and the gold: `choices` / `answer` index (mmlu), `answer` letter (mmlu_pro)
    or `target` text (bbh)."""
    missing = [c for c in _META_REQUIRED if not row.get(c)]
    if missing:
        raise ValueError(
            f"{where}: missing or empty column(s) {missing} (expected Meta's eval-details schema)"
        )
    gold = row["input_correct_responses"][0]
    doc = {
        "prompt": row["input_final_prompts"][0],
        "subject": str(row.get("subtask_name") or "").split(".")[-1],
    }
    if benchmark == "mmlu":
        # Log-likelihood over the completions Meta scored (" A" ...), or the letters of the choice list.
        letters = sorted(row.get("input_choice_list") or {}) or list("ABCD")
        choices = row.get("output_choice_completions") or [f" {k}" for k in letters]
        return {**doc, "choices": list(choices), "answer": letters.index(_meta_gold_letter(gold, where))}
    if benchmark == "mmlu_pro":
        return {**doc, "answer": _meta_gold_letter(gold, where)}
    if benchmark == "bbh":
        return {**doc, "target": gold.strip()}
    raise ValueError(f"unknown Meta eval-details benchmark {benchmark!r} (mmlu, mmlu_pro, bbh)")


def load_meta_details(
    data_dir: str | None = None,
    files: dict[str, str] | None = None,
    benchmark: str = "",
    interleave_by: dict[str, str] | None = None,
    **_: Any,
) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` for Meta's eval-details files (.parquet as published, or .jsonl): each row's
    rendered prompt and expected answer become one doc (see `meta_details_doc`); `interleave_by` as in `load`."""
    if not data_dir or not files:
        raise ValueError(
            "no data_dir/files: pass metadata={'data_dir': ...} and list `files` in the task YAML"
        )
    splits = {}
    for name, rel in files.items():
        path = _existing(Path(data_dir) / rel)
        rows = read_rows(path)
        splits[name] = [meta_details_doc(r, benchmark, f"{path} row {i}") for i, r in enumerate(rows)]
    splits = _interleaved(splits, interleave_by)
    return datasets.DatasetDict({name: _to_dataset(rows) for name, rows in splits.items()})


def _field(row: dict, path: str) -> Any:
    """A row's value at a dotted path (`meta.id_task` in MERA records), None when absent."""
    for key in path.split("."):
        row = row.get(key) if isinstance(row, dict) else None
    return row


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Rows as a Dataset (their columns are typable: `check_types`); a row lacking a column holds None there."""
    keys = dict.fromkeys(key for row in rows for key in row)
    return datasets.Dataset.from_dict({key: [row.get(key) for row in rows] for key in keys})


class DocShotsSampler(ContextSampler):
    """First-n few-shot exemplars taken from the eval doc's own `fewshot` list (same subject, dev order).

    lm-eval passes the eval doc to the sampler only when `fewshot_split` equals `test_split`, so tasks
    using this sampler set both to the test split; the exemplars themselves come from `load`."""

    def sample(self, n: int, eval_doc: dict | None = None, df=None, **kwargs) -> list[dict]:
        if eval_doc is None:
            raise ValueError("DocShotsSampler needs fewshot_split == test_split so that it sees the eval doc")
        shots = eval_doc[SHOTS_FIELD]
        if len(shots) < n:
            raise ValueError(
                f"{n}-shot requested but only {len(shots)} exemplars for this doc's subject"
                " (or the task's `max_shots`)"
            )
        return shots[:n]
