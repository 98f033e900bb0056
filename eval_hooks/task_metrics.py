"""lm-eval `process_results` and `aggregation` hooks that score our tasks with eval_hooks.metrics."""

from __future__ import annotations

from contextlib import contextmanager

from eval_hooks import metrics
from eval_hooks.sandbox import check_completion, check_io


def llmjp_exact_match(doc: dict, results: list[str]) -> dict:
    """llm-jp-eval exact match of the generation against `output`."""
    return {"exact_match": metrics.exact_match_nfkc(results[0], doc["output"])}


def llmjp_char_f1(doc: dict, results: list[str]) -> dict:
    """llm-jp-eval char-F1 of the generation against `output`."""
    return {"char_f1": metrics.char_f1(results[0], doc["output"])}


_scoring_tokenizer = None  # the evaluated model's tokenizer while eval_hooks.runner scores a model


@contextmanager
def model_tokenizer(tokenizer):
    """Make `tokenizer` the one that tokenizer-based metrics (XL-Sum's `rouge2_tokenizer`) use meanwhile."""
    global _scoring_tokenizer
    previous, _scoring_tokenizer = _scoring_tokenizer, tokenizer
    try:
        yield
    finally:
        _scoring_tokenizer = previous


def xlsum_rouge2(doc: dict, results: list[str]) -> dict:
    """ROUGE-2 F over MeCab words (tokenizer-independent), and over the evaluated model's tokens (the Swallow
    card's variant) when the runner has set the model's tokenizer; the lm_eval CLI gives the MeCab one only."""
    pred, gold = results[0].strip(), doc["summary"]
    scores = {"rouge2_mecab": metrics.rouge2(pred, gold)}
    if _scoring_tokenizer is not None:
        scores["rouge2_tokenizer"] = metrics.rouge2(
            pred, gold, metrics.tokenizer_tokenize(_scoring_tokenizer)
        )
    return scores


def mgsm_exact_match(doc: dict, results: list[str]) -> dict:
    """MGSM: the last integer of the generation equals `answer_number`."""
    return {"exact_match": metrics.mgsm_exact_match(results[0], doc["answer_number"])}


def _pair_en(doc: dict, results: list[str]) -> dict:
    return {"bleu": (results[0].strip(), doc["translation"]["en"])}


def _pair_ja(doc: dict, results: list[str]) -> dict:
    return {"bleu": (results[0].strip(), doc["translation"]["ja"])}


wmt_ja_en_pair, wmt_en_ja_pair = _pair_en, _pair_ja


def bleu(pairs: list[tuple[str, str]]) -> float:
    """Corpus BLEU (sacrebleu 13a) of English outputs."""
    preds, golds = zip(*pairs, strict=True)
    return metrics.corpus_bleu(list(preds), list(golds))


def bleu_ja(pairs: list[tuple[str, str]]) -> float:
    """Corpus BLEU of Japanese outputs, word-split with nagisa first."""
    preds, golds = zip(*pairs, strict=True)
    return metrics.corpus_bleu(list(preds), list(golds), japanese_target=True)


def _samples(results: list) -> list[str]:
    # With `repeats` and the take_first_k filter lm-eval hands over [[sample, ...]]: one list per request.
    return results[0] if results and isinstance(results[0], list) else results


def humaneval_pass_at_1(doc: dict, results: list) -> dict:
    """Unbiased pass@1 of one problem's samples, each checked in the sandbox."""
    samples = _samples(results)
    passed = sum(check_completion(doc["prompt"], r, doc["test"], doc["entry_point"]) for r in samples)
    return {"pass@1": metrics.pass_at_k(len(samples), passed, 1)}


def squad_exact_match(doc: dict, results: list[str]) -> dict:
    """SQuAD-normalised exact match, max over the golds. `exact_match` is the card's (HF squad_v2 `exact`): an
    impossible question's gold is "", so only an empty answer scores. `exact_match_unanswerable`, ours and not on
    the card, also counts "unanswerable", the answer the exemplars show for impossible questions."""
    pred, golds = results[0].strip(), doc["golds"]
    impossible = golds == [""]
    return {
        "exact_match": metrics.squad_em(pred, golds),
        "exact_match_unanswerable": metrics.squad_em(pred, ["", "unanswerable"] if impossible else golds),
    }


# --- MERA ------------------------------------------------------------------------------------------------------


def _mera_answer(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def _mera_golds(doc: dict) -> list[str]:
    outputs = doc["outputs"]
    return [o["segment"] for o in outputs] if isinstance(outputs, list) else [str(outputs)]


def mera_acc(doc: dict, results: list[str]) -> dict:
    """Accuracy of the first output line against the gold label."""
    return {"acc": float(_mera_answer(results[0]) == str(doc["outputs"]).strip())}


def mera_em(doc: dict, results: list[str]) -> dict:
    """Exact match of the first output line (arithmetic tasks)."""
    return {"em": float(_mera_answer(results[0]) == str(doc["outputs"]).strip())}


def mera_acc_f1(doc: dict, results: list[str]) -> dict:
    """Accuracy per doc, plus the (prediction, gold) pair for the corpus-level macro F1."""
    pred, gold = _mera_answer(results[0]), str(doc["outputs"]).strip()
    return {"acc": float(pred == gold), "f1_macro": (pred, gold)}


def f1_macro(pairs: list[tuple[str, str]]) -> float:
    """Macro F1 as MERA's generative tasks score it (sklearn's default): over the classes of the golds and of
    the predictions, so an answer outside the labels is a class of its own with F1 0."""
    from sklearn.metrics import f1_score

    preds, golds = zip(*pairs, strict=True)
    return float(f1_score(golds, preds, average="macro", zero_division=0))


def mera_qa(doc: dict, results: list[str]) -> dict:
    """MultiQ / CheGeKa: SQuAD-style F1 and EM, max over gold answers."""
    pred, golds = _mera_answer(results[0]), _mera_golds(doc)
    return {"f1": metrics.squad_f1(pred, golds), "em": metrics.squad_em(pred, golds)}


def mera_use(doc: dict, results: list[str]) -> dict:
    """USE: this item's (variant, points, available points) for grade_norm."""
    meta = doc["meta"]
    points, available = metrics.use_points(
        meta["type"], meta["id_task"], str(doc["outputs"]), results[0].strip()
    )
    return {"grade_norm": (str(meta["variant"]), points, available)}


def grade_norm(items: list[tuple[str, int, int]]) -> float:
    """USE grade_norm over the docs' (variant, points, available points)."""
    return metrics.grade_norm(items)


MERA_CODE_KS = (1, 5, 10)


def mera_code_pass_at_k(doc: dict, results: list) -> dict:
    """ruHumanEval / ruCodeEval: run each sample (the function head + the completion) on the record's test
    inputs in the sandbox; unbiased pass@1, @5, @10 over the samples."""
    import ast

    cases = ast.literal_eval(doc["inputs"]["tests"])
    entry, head = doc["meta"]["entry_point"], doc["inputs"]["function"]
    samples = _samples(results)
    passed = sum(check_io(head + r, entry, cases, doc["outputs"]) for r in samples)
    return {f"pass@{k}": metrics.pass_at_k(len(samples), passed, k) for k in MERA_CODE_KS}


def mera_detox_pair(doc: dict, results: list[str]) -> dict:
    """ruDetox: (rewrite, gold neutral rewrite) for the reference chrF; MERA's own J needs neural classifiers."""
    return {"chrf_ref": (_mera_answer(results[0]), str(doc["outputs"]))}


def chrf(pairs: list[tuple[str, str]]) -> float:
    """Corpus chrF (sacrebleu defaults) in [0, 1] of rewrites against the gold references."""
    import sacrebleu

    preds, golds = zip(*pairs, strict=True)
    return sacrebleu.corpus_chrf(list(preds), [list(golds)]).score / 100


ETHICS_QUESTIONS = ("correct", "good", "ethical")
ETHICS_CATEGORIES = ("virtue", "law", "moral", "justice", "utilitarianism")


def mera_ethics(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """ruEthics: the model answers 1 when log p(" 1") >= log p(" 0"); one (gold, answer) pair per ethical
    category under the key mcc_<question>_<category>, so each question gets five MCCs. Every doc emits all 15
    keys, None for the other questions: lm-eval gathers ranks by rank 0's keys, so each doc needs the same ones."""
    (ll_no, _), (ll_yes, _) = results
    answer = int(ll_yes >= ll_no)
    question = doc["meta"]["question"]
    if question not in ETHICS_QUESTIONS:
        raise ValueError(
            f"ruEthics record {doc['meta']}: unknown question (expected one of {ETHICS_QUESTIONS})"
        )
    return {
        f"mcc_{q}_{cat}": (int(doc["outputs"][cat]), answer) if q == question else None
        for q in ETHICS_QUESTIONS
        for cat in ETHICS_CATEGORIES
    }


def mcc(pairs: list[tuple[int, int] | None]) -> float | None:
    """Matthews correlation of the (gold, answer) pairs, skipping other questions' None; None without pairs."""
    scored = [p for p in pairs if p is not None]
    return metrics.mcc(scored) if scored else None
