"""The model cards' aggregate rows (C-Avg/O-Avg/Overall, Ja Avg, En Avg, MERA total) from per-benchmark scores."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import fmean

from eval_hooks.metrics import mera_has_score, mera_task_score


@dataclass(frozen=True)
class Column:
    """One benchmark column of a card: its name on the card, the lm-eval task and metric key that fill it."""

    name: str
    task: str
    metric: str
    n: int = 0  # the card's number of questions (0: the card states none), the weight in its micro-averages


@dataclass(frozen=True)
class Aggregate:
    """A mean over columns or earlier aggregates; weighted by the columns' `n` when `weighted`."""

    name: str
    parts: tuple[str, ...]
    weighted: bool = False


@dataclass(frozen=True)
class Card:
    """A model card's columns and aggregate rows; `scale` turns lm-eval's 0-1 scores into the card's unit."""

    name: str
    columns: tuple[Column, ...]
    aggregates: tuple[Aggregate, ...]
    scale: float = 1.0
    diagnostics: tuple[str, ...] = field(default=())


def _col(name: str, task: str, metric: str = "acc,none", n: int = 0) -> Column:
    return Column(name, task, metric, n)


_COT = "exact_match,last-match"
_BBH, _PRO = "exact_match,get-answer", "exact_match,custom-extract"
CONTROL_LLM = Card(
    name="control_llm",
    scale=100.0,
    columns=(
        _col("CEval", "cl_ceval_valid", n=1346),
        _col("CEvalC", "cl_ceval_valid_cot_zh", _COT, n=1346),
        _col("CMMLU", "cl_cmmlu", n=11582),
        _col("CMMLUC", "cl_cmmlu_cot_zh", _COT, n=11582),
        _col("BBH", "cl_bbh_cot_3shot", _BBH, n=6511),
        _col("MMLU", "cl_mmlu", n=14042),
        _col("MMLU-Pro", "cl_mmlu_pro", _PRO, n=12032),
    ),
    # The card's C-Avg and O-Avg are micro-averages of the CoT / generative columns only.
    aggregates=(
        Aggregate("C-Avg", ("CEvalC", "CMMLUC"), weighted=True),
        Aggregate("O-Avg", ("BBH", "MMLU-Pro"), weighted=True),
        Aggregate("Overall", ("C-Avg", "O-Avg")),
    ),
)

# The same card with Meta's own prompts (eval-details files, what the card ran) for BBH, MMLU and MMLU-Pro: a
# board of its own (suite control_llm_zh_meta), so the open prompts' board is kept when both suites run.
_META_TASKS = {"BBH": "cl_meta_bbh_3shot", "MMLU": "cl_meta_mmlu_5shot", "MMLU-Pro": "cl_meta_mmlu_pro_5shot"}
CONTROL_LLM_META = replace(
    CONTROL_LLM,
    name="control_llm_meta",
    columns=tuple(replace(c, task=_META_TASKS.get(c.name, c.task)) for c in CONTROL_LLM.columns),
)

SWALLOW_JA = Card(
    name="swallow_ja",
    columns=(
        _col("JCommonsenseQA", "cl_jcommonsenseqa", "exact_match,none"),
        _col("JEMHopQA", "cl_jemhopqa", "char_f1,none"),
        _col("NIILC", "cl_niilc", "char_f1,none"),
        _col("JSQuAD", "cl_jsquad", "char_f1,none"),
        _col("XL-Sum", "cl_xlsum_ja", "rouge2_mecab,none"),
        _col("MGSM", "cl_mgsm_ja", "exact_match,none"),
        _col("WMT20 en-ja", "cl_wmt20_en_ja", "bleu,none"),
        _col("WMT20 ja-en", "cl_wmt20_ja_en", "bleu,none"),
        _col("JMMLU", "cl_jmmlu", "exact_match,none"),
        _col("JHumanEval", "cl_jhumaneval", "pass@1,all"),
    ),
    aggregates=(
        Aggregate(
            "Ja Avg",
            (
                "JCommonsenseQA",
                "JEMHopQA",
                "NIILC",
                "JSQuAD",
                "XL-Sum",
                "MGSM",
                "WMT20 en-ja",
                "WMT20 ja-en",
                "JMMLU",
                "JHumanEval",
            ),
        ),
    ),
)

SWALLOW_EN = Card(
    name="swallow_en",
    columns=(
        _col("OpenBookQA", "cl_openbookqa"),
        _col("TriviaQA", "cl_triviaqa", "exact_match,remove_whitespace"),
        _col("HellaSwag", "cl_hellaswag"),
        _col("SQuAD2", "cl_squadv2", "exact_match,none"),
        _col("XWINO", "cl_xwinograd_en"),
        _col("MMLU", "cl_mmlu"),
        _col("GSM8K", "cl_gsm8k", "exact_match,strict-match"),
        _col("BBH", "cl_bbh_cot_fewshot", "exact_match,get-answer"),
        _col("HumanEval", "cl_humaneval", "pass@1,all"),
    ),
    aggregates=(
        Aggregate(
            "En Avg",
            ("OpenBookQA", "TriviaQA", "HellaSwag", "SQuAD2", "XWINO", "MMLU", "GSM8K", "BBH", "HumanEval"),
        ),
    ),
)

MERA_BASE = (
    "CheGeKa",
    "LCS",
    "MathLogicQA",
    "MultiQ",
    "PARus",
    "RCB",
    "ruModAr",
    "ruMultiAr",
    "ruOpenBookQA",
    "ruTiE",
    "ruWorldTree",
    "RWSD",
    "MaMuRAMu",
    "ruCodeEval",
    "USE",
)
MERA_DIAGNOSTIC = ("BPS", "SimpleAr", "ruMMLU", "ruHumanEval", "ruDetox", "ruEthics", "ruHateSpeech", "ruHHH")
# A MERA column takes all of its task's metrics; its score is the mean of the main ones (metrics.mera_task_score).
MERA = Card(
    name="mera",
    columns=tuple(_col(t, f"cl_mera_{t.lower()}", metric="") for t in MERA_BASE + MERA_DIAGNOSTIC),
    aggregates=(Aggregate("Total", MERA_BASE),),
    diagnostics=MERA_DIAGNOSTIC,
)

CARDS: dict[str, Card] = {c.name: c for c in (CONTROL_LLM, CONTROL_LLM_META, SWALLOW_JA, SWALLOW_EN, MERA)}


def get_card(name: str) -> Card:
    """The card registered under `name`, with a did-you-mean error for unknown names."""
    if name not in CARDS:
        import difflib

        close = difflib.get_close_matches(name, CARDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown card {name!r}; known: {sorted(CARDS)}.{hint}")
    return CARDS[name]


def _column_value(card: Card, name: str, value: float | dict[str, float]) -> float:
    """A column's score: a number as given, or for MERA a dict of the task's main metrics."""
    if isinstance(value, dict):
        if card.name != "mera":
            raise ValueError(f"{card.name} column {name!r} needs a number, got {value!r}")
        return mera_task_score(name, value)
    return float(value)


def _is_partial(counts: dict, card_n: int) -> bool:
    # Fewer questions than the card's (a missing subject file), or than the data holds (a `limit`).
    scored, available = counts["scored"], counts.get("available")
    return (card_n > 0 and scored < card_n) or (available is not None and scored < available)


def score(
    card: Card | str,
    columns: dict[str, float | dict[str, float]],
    questions: dict[str, dict[str, int | None]] | None = None,
) -> dict:
    """Card aggregates from per-column scores (in the card's unit); aggregates with a missing part are None.

    `questions` ({column: {"scored": n, "available": n in the data or None}}, see `questions_from_results`) go
    into the board beside the card's own count; a column scored on fewer questions than the card's or than its
    data holds, and every aggregate built from such a column, is listed in the board's `partial`: its number
    is not comparable with the card's. Scores given without counts are taken as they are."""
    card = get_card(card) if isinstance(card, str) else card
    columns = {k: v for k, v in columns.items() if v is not None}  # a null score is a missing column
    known = {c.name for c in card.columns}
    unknown = set(columns) - known
    if unknown:
        raise KeyError(f"columns not on the {card.name} card: {sorted(unknown)}")
    # A diagnostic without a single score (ruEthics' MCC table, ruDetox without MERA's J) is reported as its metrics.
    unscored = {
        k: v
        for k, v in columns.items()
        if k in card.diagnostics and isinstance(v, dict) and not mera_has_score(k, v)
    }
    values: dict[str, float] = {k: _column_value(card, k, v) for k, v in columns.items() if k not in unscored}
    weights = {c.name: c.n for c in card.columns}
    counts = {
        c.name: {**questions[c.name], "card": c.n or None}
        for c in card.columns
        if c.name in (questions or {})
    }
    partial = {k for k, q in counts.items() if k in columns and _is_partial(q, weights[k])}
    aggregates: dict[str, float | None] = {}
    for agg in card.aggregates:
        parts = [values.get(p, aggregates.get(p)) for p in agg.parts]
        if any(p is None for p in parts):
            aggregates[agg.name] = None
            continue
        if agg.weighted:
            w = [weights[p] for p in agg.parts]
            aggregates[agg.name] = sum(wi * v for wi, v in zip(w, parts, strict=True)) / sum(w)
        else:
            aggregates[agg.name] = fmean(parts)
        if partial & set(agg.parts):
            partial.add(agg.name)
    diagnostics = {k: values.get(k, unscored.get(k)) for k in card.diagnostics if k in columns}
    main = {k: v for k, v in values.items() if k not in card.diagnostics}
    order = [c.name for c in card.columns] + [a.name for a in card.aggregates]
    return {
        "card": card.name,
        "columns": main,
        "diagnostics": diagnostics,
        "aggregates": aggregates,
        "questions": counts,
        "partial": [k for k in order if k in partial],
    }


def columns_from_results(card: Card | str, results: dict[str, dict]) -> dict[str, float | dict[str, float]]:
    """Map lm-eval per-task results ({task: {"acc,none": x, ...}}) onto the card's columns, scaled; a column
    without a metric key (MERA) gets all of its task's metrics by name (each MERA task has one filter)."""
    card = get_card(card) if isinstance(card, str) else card
    out: dict[str, float | dict[str, float]] = {}
    for col in card.columns:
        metrics = results.get(col.task)
        if metrics is None:
            continue
        if not col.metric:
            out[col.name] = {k.split(",")[0]: float(v) for k, v in metrics.items()}
        elif col.metric in metrics:
            out[col.name] = float(metrics[col.metric]) * card.scale
    return out


def questions_from_results(
    card: Card | str, scored: dict[str, int], available: dict[str, int] | None = None
) -> dict[str, dict[str, int | None]]:
    """{column: {"scored", "available"}} from per-task counts: questions scored (lm-eval's effective n-samples)
    and questions in the data (its original count; more when a `limit` was applied; None when unknown)."""
    card = get_card(card) if isinstance(card, str) else card
    return {
        c.name: {"scored": scored[c.task], "available": (available or {}).get(c.task)}
        for c in card.columns
        if c.task in scored
    }


def load_board(card: Card | str, path: str | Path) -> dict:
    """The board of a JSON file: {column: score} as on the card (taken as it is), or a results JSON of our
    runner (recomputed with its question counts)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "tasks" not in data:
        return score(card, data)
    questions = questions_from_results(card, data.get("n_samples", {}), data.get("n_available"))
    return score(card, columns_from_results(card, data["tasks"]), questions)


def markdown_table(card: Card | str, rows: dict[str, dict]) -> str:
    """A card-style table: one row per model (from `score` outputs), columns then aggregates; a partial number
    is starred, and a note under the table says on how many of the card's questions each was scored."""
    card = get_card(card) if isinstance(card, str) else card
    names = [c.name for c in card.columns if c.name not in card.diagnostics] + [
        a.name for a in card.aggregates
    ]
    digits = 1 if card.scale == 100 else 4

    def cell(v: float | None, partial: bool) -> str:
        return "-" if v is None else f"{v:.{digits}f}" + ("*" if partial else "")

    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    notes = []
    for model, board in rows.items():
        merged, partial = {**board["columns"], **board["aggregates"]}, board["partial"]
        lines.append(f"| {model} | " + " | ".join(cell(merged.get(n), n in partial) for n in names) + " |")
        counts = [(k, q) for k, q in board["questions"].items() if k in partial]
        if counts:
            notes.append(
                f"{model}: "
                + ", ".join(f"{k} {q['scored']} of {q['card'] or q['available']}" for k, q in counts)
            )
    if notes:  # "\*": a line starting with "* " would be a list item in markdown
        lines += ["", "\\* partial, not comparable with the card; questions scored: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def to_json(board: dict) -> str:
    """The scoreboard as stable, indented JSON."""
    return json.dumps(board, indent=2, ensure_ascii=False, sort_keys=True)
