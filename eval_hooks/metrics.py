"""Metrics lm-eval lacks: llm-jp-eval char-F1/EM, Japanese ROUGE-2 and BLEU, pass@k, MGSM, SQuAD F1/EM, MERA."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from statistics import fmean

# --- llm-jp-eval ---------------------------------------------------------------------------------------------


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def first_paragraph(text: str) -> str:
    """llm-jp-eval scores only the output before the first blank line."""
    return text.split("\n\n")[0]


# fuzzywuzzy's full_process as token_sort_ratio calls it (force_ascii): U+0080-U+00FF deleted, then every
# non-word character (\W: "_" is a word character) a space, lower case, stripped.
_LATIN1 = dict.fromkeys(range(128, 256))
_NON_WORD = re.compile(r"\W")


def _fuzzywuzzy_process(text: str) -> str:
    return _NON_WORD.sub(" ", text.translate(_LATIN1)).lower().strip()


def char_f1(pred: str, gold: str) -> float:
    """llm-jp-eval char-F1: fuzzywuzzy token_sort_ratio / 100 on NFKC text (rapidfuzz on fuzzywuzzy's text
    processing, rounded like fuzzywuzzy)."""
    from rapidfuzz import fuzz

    a, b = (_fuzzywuzzy_process(_nfkc(t)) for t in (first_paragraph(pred), gold))
    return int(round(fuzz.token_sort_ratio(a, b, processor=None))) / 100


def exact_match_nfkc(pred: str, gold: str) -> float:
    """llm-jp-eval exact match: first paragraph, NFKC, surrounding whitespace ignored."""
    return float(_nfkc(first_paragraph(pred)).strip() == _nfkc(gold).strip())


# --- ROUGE-2 and BLEU ------------------------------------------------------------------------------------------


@cache
def _mecab():
    import fugashi  # needs unidic-lite (or another unidic) installed

    return fugashi.Tagger()


def mecab_tokenize(text: str) -> list[str]:
    """Word surfaces from MeCab (fugashi + unidic-lite): the tokenizer-independent ROUGE-2 variant."""
    return [w.surface for w in _mecab()(text)]


def tokenizer_tokenize(tokenizer) -> Callable[[str], list[str]]:
    """Token ids as strings from an HF tokenizer: the variant the Swallow card's XL-Sum numbers use."""
    return lambda text: [str(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def _bigrams(tokens: list[str]) -> Counter:
    return Counter(zip(tokens, tokens[1:], strict=False))


def rouge2(pred: str, gold: str, tokenize: Callable[[str], list[str]] = mecab_tokenize) -> float:
    """ROUGE-2 F-measure of one pair (as rouge-score computes it) over the given word segmentation."""
    p, g = _bigrams(tokenize(pred)), _bigrams(tokenize(gold))
    overlap = sum((p & g).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def nagisa_split(text: str) -> str:
    """Japanese words separated by spaces (nagisa), so sacrebleu's 13a tokenizer sees word boundaries."""
    try:
        import nagisa
    except ImportError as e:  # nagisa builds DyNet; some platforms lack a wheel
        raise ImportError("BLEU on Japanese targets needs `pip install nagisa`") from e
    return " ".join(nagisa.tagging(text).words)


def corpus_bleu(preds: list[str], golds: list[str], japanese_target: bool = False) -> float:
    """sacrebleu corpus BLEU (13a) in [0, 1]; Japanese targets are word-split with nagisa first."""
    import sacrebleu

    if japanese_target:
        preds, golds = [nagisa_split(p) for p in preds], [nagisa_split(g) for g in golds]
    return sacrebleu.corpus_bleu(preds, [golds], tokenize="13a").score / 100


# --- pass@k ----------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c pass (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(results: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems given (n, c) per problem."""
    return fmean(pass_at_k(n, c, k) for n, c in results)


# --- MGSM and SQuAD-style answers ------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_PUNCT = set(string.punctuation)


def last_integer(text: str) -> int | None:
    """MGSM answer: the last number in the text, commas removed; None unless it is an integer. The text is
    NFKC-normalised first, as llm-jp-eval normalises outputs, so full-width digits, comma, point and minus
    ("１，２００", "－３") read as ASCII ones; the ideographic comma "、" lists numbers and stays a separator."""
    found = _NUMBER.findall(_nfkc(text))
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None


def mgsm_exact_match(pred: str, answer_number: int) -> float:
    """1.0 when the last integer of the prediction equals the gold number."""
    return float(last_integer(pred) == int(answer_number))


def squad_normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no English articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_em(pred: str, golds: list[str]) -> float:
    """Exact match after SQuAD normalisation, max over gold answers."""
    return max(float(squad_normalize(pred) == squad_normalize(g)) for g in golds)


def squad_f1(pred: str, golds: list[str]) -> float:
    """Token-level F1 after SQuAD normalisation, max over gold answers."""

    def f1(gold: str) -> float:
        p, g = squad_normalize(pred).split(), squad_normalize(gold).split()
        common = sum((Counter(p) & Counter(g)).values())
        if not p or not g:
            return float(p == g)
        if common == 0:
            return 0.0
        precision, recall = common / len(p), common / len(g)
        return 2 * precision * recall / (precision + recall)

    return max(f1(g) for g in golds)


# --- MERA ------------------------------------------------------------------------------------------------------

# The metrics averaged into each task's leaderboard score; a task missing here has one metric, its score.
MERA_MAIN_METRICS: dict[str, tuple[str, ...]] = {
    "RCB": ("acc", "f1_macro"),
    "ruOpenBookQA": ("acc", "f1_macro"),
    "ruWorldTree": ("acc", "f1_macro"),
    "MultiQ": ("f1", "em"),
    "CheGeKa": ("f1", "em"),
    "ruCodeEval": ("pass@1", "pass@5", "pass@10"),
    "ruHumanEval": ("pass@1", "pass@5", "pass@10"),
    "USE": ("grade_norm",),
    "ruDetox": ("j",),  # J = STA * SIM * FL from MERA's neural classifiers; not computable offline
    "ruEthics": (),  # a 3 x 5 table of MCCs (question x ethical category); MERA gives no single score
}


def mera_has_score(task: str, metrics: dict[str, float]) -> bool:
    """Whether `metrics` hold what the task's leaderboard score needs (ruEthics never has one)."""
    main = MERA_MAIN_METRICS.get(task)
    if main is None:
        return len(metrics) == 1
    return bool(main) and set(main) <= set(metrics)


def mera_task_score(task: str, metrics: dict[str, float]) -> float:
    """A MERA task's leaderboard score: the mean of its main metrics (the only metric for single-metric tasks)."""
    main = MERA_MAIN_METRICS.get(task)
    if main is None:
        if len(metrics) != 1:
            raise ValueError(f"MERA task {task!r} has one main metric; got {sorted(metrics)}")
        return float(next(iter(metrics.values())))
    missing = set(main) - set(metrics)
    if missing:
        raise KeyError(f"MERA task {task!r} needs metrics {main}; missing {sorted(missing)}")
    return fmean(metrics[m] for m in main)


def use_points(task_type: str, id_task: str, gold: str, pred: str) -> tuple[int, int]:
    """MERA USE: (points scored, points available) for one exam item, with MERA's per-type rules.

    matching: one point per position matching the gold list; text: the prediction, lower-cased with digits and
    non-word characters removed, must be one of the comma-separated golds; multiple choice: the set of chosen
    numbers must equal the gold set (task 16: |gold & pred| - |pred| + |gold|, at least 0). The available points
    follow from the same rules, so a full variant has MERA's 34. Whitespace around the items is ignored."""
    golds = [g.strip() for g in gold.split(",")]
    preds = [p.strip() for p in pred.split(",")]
    if task_type == "matching":
        return (
            sum(g == p for g, p in zip(golds, preds, strict=True)) if len(golds) == len(preds) else 0
        ), len(golds)
    if task_type == "text":
        return int(re.sub(r"[\d\W]", "", pred).lower() in golds), 1
    if str(id_task) == "16":
        preds += ["-1"] * (len(golds) - len(preds))
        return max(0, len(set(golds) & set(preds)) - len(preds) + len(golds)), len(golds)
    return int(set(golds) == set(preds)), 1


def grade_norm(items: Iterable[tuple[str, float, float]]) -> float:
    """MERA USE: per exam variant, points scored / maximum points, averaged over variants."""
    got: dict[str, float] = {}
    best: dict[str, float] = {}
    for variant, points, max_points in items:
        got[variant] = got.get(variant, 0.0) + points
        best[variant] = best.get(variant, 0.0) + max_points
    return fmean(got[v] / best[v] for v in got)


def mcc(pairs: Iterable[tuple[int, int]]) -> float:
    """Matthews correlation of (gold, prediction) binary pairs; 0 when either side is constant (as sklearn)."""
    tp = fp = fn = tn = 0
    for gold, pred in pairs:
        tp += gold and pred
        fp += (not gold) and pred
        fn += gold and not pred
        tn += (not gold) and not pred
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0
