import math

import pytest

from eval_hooks import metrics


def test_char_f1_llm_jp_checks():
    assert metrics.char_f1("東京都庁", "東京都") == 0.86
    assert metrics.char_f1("１８６７年", "1867年") == 1.0
    assert metrics.char_f1("1867年\n\n理由: 江戸幕府が", "1867年") == 1.0  # only the first paragraph counts
    assert metrics.char_f1("大阪", "東京") == 0.0


@pytest.mark.parametrize(
    ("pred", "gold", "fuzzywuzzy"),  # fuzzywuzzy 0.18 + python-Levenshtein's token_sort_ratio / 100, run once
    [
        ("snake_case", "snake case", 0.5),  # "_" is a word character to its \W
        ("a_b", "a b", 0.67),
        ("Ünïcödé", "unicode", 0.6),  # U+0080-U+00FF are deleted, not spaced
        ("café au lait", "cafe", 0.4),
        ("温度は30°", "30°", 0.57),
        ("!!!", "???", 1.0),  # both empty after processing
    ],
)
def test_char_f1_processes_text_as_fuzzywuzzy_does(pred, gold, fuzzywuzzy):
    assert metrics.char_f1(pred, gold) == fuzzywuzzy


def test_exact_match_nfkc():
    assert metrics.exact_match_nfkc("１８６７年", "1867年") == 1.0
    assert metrics.exact_match_nfkc("Ｂ\n\n説明", "B") == 1.0
    assert metrics.exact_match_nfkc("1868年", "1867年") == 0.0
    # a single newline does not end the paragraph; only a blank line does
    assert metrics.exact_match_nfkc("1867年\n江戸", "1867年\n江戸") == 1.0


def test_rouge2_by_hand_and_with_mecab():
    split = str.split
    assert metrics.rouge2("a b c d", "a b c d", split) == 1.0
    # pred bigrams ab, bc, cx; gold ab, bc, cd: overlap 2 -> p = r = 2/3.
    assert metrics.rouge2("a b c x", "a b c d", split) == pytest.approx(2 / 3)
    assert metrics.rouge2("a", "a b", split) == 0.0
    assert metrics.mecab_tokenize("東京都庁に行きました")[:2] == ["東京", "都庁"]
    assert metrics.rouge2("東京都庁に行きました", "東京都庁に行った") > 0.3


def test_rouge2_matches_rouge_score_on_latin_text():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    pred, gold = "the cat sat on the mat today", "the cat was on the mat"
    ref = rouge_scorer.RougeScorer(["rouge2"]).score(gold, pred)["rouge2"].fmeasure
    assert metrics.rouge2(pred, gold, str.split) == pytest.approx(ref)


def _word_tokenizer(vocab: list[str]):
    # A hand-made tokenizer: one id per listed piece, split on the pieces' boundaries by whitespace.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *vocab])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_rouge2_with_model_tokenizer_by_hand(tiny_tokenizer):
    tok = _word_tokenizer(["東京", "都庁", "に", "行き", "ました", "行った"])
    tokenize = metrics.tokenizer_tokenize(tok)
    assert tokenize("東京 都庁 に 行った") == ["1", "2", "3", "6"]
    # pred bigrams 東京-都庁, 都庁-に, に-行き, 行き-ました; gold 東京-都庁, 都庁-に, に-行った:
    # overlap 2 -> P = 2/4, R = 2/3, F = 4/7.
    assert metrics.rouge2("東京 都庁 に 行き ました", "東京 都庁 に 行った", tokenize) == pytest.approx(4 / 7)
    # The same pair, unspaced, is one unknown token per text for this tokenizer: no bigrams, no credit.
    assert metrics.rouge2("東京都庁に行きました", "東京都庁に行った", tokenize) == 0.0
    assert (
        metrics.rouge2("今日は晴れです", "今日は晴れです", metrics.tokenizer_tokenize(tiny_tokenizer)) == 1.0
    )


def test_xlsum_scores_with_the_runner_model_tokenizer():
    from eval_hooks import task_metrics

    doc = {"summary": "東京 都庁 に 行った"}
    assert task_metrics.xlsum_rouge2(doc, ["東京 都庁 に 行き ました"]).keys() == {"rouge2_mecab"}
    with task_metrics.model_tokenizer(_word_tokenizer(["東京", "都庁", "に", "行き", "ました", "行った"])):
        scores = task_metrics.xlsum_rouge2(doc, [" 東京 都庁 に 行き ました\n"])
    assert scores["rouge2_tokenizer"] == pytest.approx(4 / 7)
    assert task_metrics.xlsum_rouge2(doc, ["x"]).keys() == {"rouge2_mecab"}  # context restored


def test_bleu_plain_and_japanese():
    assert metrics.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert metrics.corpus_bleu(["a dog ran"], ["the cat sat on the mat"]) < 0.1
    pytest.importorskip("nagisa")
    assert metrics.nagisa_split("東京都庁に行きました").split()[0] == "東京"
    # Unsegmented Japanese is one 13a token per sentence; nagisa gives partial credit for shared words.
    pred, gold = ["私は東京に行きました。"], ["私は大阪に行きました。"]
    assert metrics.corpus_bleu(pred, gold) == 0.0
    assert 0.2 < metrics.corpus_bleu(pred, gold, japanese_target=True) < 1.0


def test_pass_at_k_closed_form():
    assert metrics.pass_at_k(10, 0, 1) == 0.0
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert metrics.pass_at_k(10, 6, 5) == 1.0  # n - c < k
    assert metrics.pass_at_k(5, 1, 5) == 1.0
    # n - c == k: one k-subset fails, so pass@k < 1 (0 when nothing passes)
    assert metrics.pass_at_k(10, 0, 10) == 0.0
    assert metrics.pass_at_k(1, 0, 1) == 0.0
    assert metrics.pass_at_k(10, 5, 5) == pytest.approx(1 - 1 / 252)
    assert metrics.mean_pass_at_k([(10, 3), (10, 0)], 1) == pytest.approx(0.15)


def test_mgsm_last_integer():
    assert metrics.last_integer("5 + 6 = 11。答えは1,234です") == 1234
    assert metrics.last_integer("答えは-3") == -3
    assert metrics.last_integer("答えは2.5です") is None
    assert metrics.last_integer("わかりません") is None
    # full-width forms read as ASCII ones (NFKC); "、" separates numbers
    assert metrics.last_integer("答えは１，２００円です") == 1200
    assert metrics.last_integer("答えは－３") == -3 and metrics.last_integer("答えは２．５") is None
    assert metrics.last_integer("3、12") == 12
    assert metrics.mgsm_exact_match("ステップ: 3 + 8 = 11。答えは 11", 11) == 1.0
    assert metrics.mgsm_exact_match("11 ではなく 12", 11) == 0.0


def test_squad_f1_em():
    assert metrics.squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.squad_em("the Eiffel Tower", ["Eiffel Tower", "Paris"]) == 1.0
    assert metrics.squad_f1("Eiffel Tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    assert metrics.squad_f1("Москва", ["москва"]) == 1.0
    assert metrics.squad_f1("", ["x"]) == 0.0
    assert metrics.squad_em("a dog", ["dog"]) == 1.0  # articles are dropped
    assert metrics.squad_f1("Paris", ["Eiffel Tower", "Paris"]) == 1.0  # the best gold counts, not the first


def test_mera_task_score_and_grade_norm():
    assert metrics.mera_task_score("RCB", {"acc": 0.6, "f1_macro": 0.4}) == pytest.approx(0.5)
    assert metrics.mera_task_score(
        "ruCodeEval", {"pass@1": 0.1, "pass@5": 0.2, "pass@10": 0.3}
    ) == pytest.approx(0.2)
    assert metrics.mera_task_score("PARus", {"acc": 0.9}) == 0.9
    with pytest.raises(KeyError):
        metrics.mera_task_score("MultiQ", {"f1": 0.5})
    # Variant 1: 3 of 4 points, variant 2: 1 of 4 -> mean 0.5 (not 4/8 pooled by item count).
    items = [("1", 1, 1), ("1", 2, 3), ("2", 0, 2), ("2", 1, 2)]
    assert metrics.grade_norm(items) == pytest.approx(0.5)
    assert metrics.grade_norm([("1", 1, 1), ("2", 0, 3)]) == pytest.approx(0.5)


def test_use_points_follow_mera_rules():
    assert metrics.use_points("multiple_choice_based_on_text", "1", "1,3", "3, 1") == (1, 1)
    assert metrics.use_points("multiple_choice_based_on_text", "1", "1,3", "1") == (0, 1)
    # Task 16: |gold & pred| - |pred| + |gold|, floored at 0, out of |gold| points.
    assert metrics.use_points("multiple_choice_based_on_text", "16", "3,2", "2") == (1, 2)
    assert metrics.use_points("multiple_choice_based_on_text", "16", "3,2", "1,4,5") == (0, 2)
    assert metrics.use_points("matching", "8", "1,2,3", "1,3,3") == (2, 3)
    assert metrics.use_points("matching", "8", "1,2,3", "1,2") == (0, 3)  # wrong length scores nothing
    assert metrics.use_points("text", "7", "носков,носок", "Носков.") == (1, 1)
    # MERA's text rule is membership: an answer that normalises to "" matches an empty gold (none in labelled splits)
    assert metrics.use_points("text", "7", "", "42.") == (1, 1)
    assert metrics.use_points("text", "7", "носок", "42.") == (0, 1)


def test_mcc_against_the_formula():
    # tp=2 fp=1 fn=1 tn=2: (4 - 1) / sqrt(3 * 3 * 3 * 3) = 1/3.
    pairs = [(1, 1), (1, 1), (0, 1), (1, 0), (0, 0), (0, 0)]
    assert metrics.mcc(pairs) == pytest.approx(1 / 3)
    assert metrics.mcc([(1, 1), (0, 1)]) == 0.0  # a constant answer correlates with nothing
