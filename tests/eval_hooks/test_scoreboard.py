import json

import pytest

from eval_hooks import scoreboard

# control_llm.md: CEvalC, CMMLUC, C-Avg, BBH, MMLU-Pro, O-Avg, Overall (the card's numbers, one decimal).
CONTROL_LLM_ROWS = {
    "Llama3.1-8B": (12.8, 14.1, 13.9, 65.2, 35.5, 45.9, 29.9),
    "Full param tune": (40.2, 44.3, 43.8, 64.8, 35.0, 45.4, 44.6),
    "Stack": (32.7, 33.4, 33.3, 62.3, 35.3, 44.8, 39.1),
    "Concat16-Lerp": (34.8, 37.4, 37.1, 64.4, 35.8, 45.9, 41.5),
    "Hybrid16": (44.7, 44.3, 44.4, 65.1, 36.9, 46.8, 45.6),
    "Concat16-Dlerp": (44.7, 44.9, 44.8, 68.2, 37.9, 48.5, 46.7),
}


@pytest.mark.parametrize("model", CONTROL_LLM_ROWS)
def test_control_llm_rows(model):
    cevalc, cmmluc, c_avg, bbh, mlup, o_avg, overall = CONTROL_LLM_ROWS[model]
    board = scoreboard.score(
        "control_llm", {"CEvalC": cevalc, "CMMLUC": cmmluc, "BBH": bbh, "MMLU-Pro": mlup}
    )
    agg = board["aggregates"]
    # Inputs are rounded to 0.1 on the card, so the recomputed aggregates match to 0.1.
    assert agg["C-Avg"] == pytest.approx(c_avg, abs=0.1)
    assert agg["O-Avg"] == pytest.approx(o_avg, abs=0.1)
    assert agg["Overall"] == pytest.approx(overall, abs=0.1)


def test_control_llm_unrounded_example():
    board = scoreboard.score(
        "control_llm", {"CEvalC": 34.84, "CMMLUC": 37.37, "BBH": 64.43, "MMLU-Pro": 35.80}
    )
    assert round(board["aggregates"]["C-Avg"], 2) == 37.11
    assert board["aggregates"]["O-Avg"] == pytest.approx(45.86, abs=0.01)  # the card rounds inputs too
    assert round(board["aggregates"]["Overall"], 1) == 41.5


def test_control_llm_excludes_mmlu_and_missing_parts_are_none():
    board = scoreboard.score("control_llm", {"CEvalC": 10.0, "CMMLUC": 10.0, "MMLU": 90.0})
    assert board["aggregates"]["C-Avg"] == pytest.approx(10.0)
    assert board["aggregates"]["O-Avg"] is None
    assert board["aggregates"]["Overall"] is None
    # a null score (a task that did not run) is a missing column too
    assert scoreboard.score("control_llm", {"CEvalC": 50.0, "CMMLUC": None})["aggregates"]["C-Avg"] is None


def test_swallow_averages():
    ja = {
        "JCommonsenseQA": 0.9178,
        "JEMHopQA": 0.4963,
        "NIILC": 0.5168,
        "JSQuAD": 0.9088,
        "XL-Sum": 0.1296,
        "MGSM": 0.4880,
        "WMT20 en-ja": 0.2522,
        "WMT20 ja-en": 0.2254,
        "JMMLU": 0.4835,
        "JHumanEval": 0.3927,
    }
    en = {
        "OpenBookQA": 0.3720,
        "TriviaQA": 0.6557,
        "HellaSwag": 0.5861,
        "SQuAD2": 0.3648,
        "XWINO": 0.9002,
        "MMLU": 0.6315,
        "GSM8K": 0.5959,
        "BBH": 0.6391,
        "HumanEval": 0.4238,
    }
    assert round(scoreboard.score("swallow_ja", ja)["aggregates"]["Ja Avg"], 4) == 0.4811
    assert round(scoreboard.score("swallow_en", en)["aggregates"]["En Avg"], 4) == 0.5743


def test_mera_total_of_seed_entry_and_diagnostics_apart():
    seed = {
        "LCS": 0.156,
        "RCB": {"acc": 0.596, "f1_macro": 0.526},
        "USE": {"grade_norm": 0.317},
        "RWSD": 0.554,
        "PARus": 0.932,
        "ruTiE": 0.845,
        "MultiQ": {"f1": 0.607, "em": 0.443},
        "CheGeKa": {"f1": 0.353, "em": 0.291},
        "ruModAr": 0.56,
        "MaMuRAMu": 0.823,
        "ruMultiAr": 0.354,
        "ruCodeEval": {"pass@1": 0.0, "pass@5": 0.0, "pass@10": 0.0},
        "MathLogicQA": 0.566,
        "ruWorldTree": {"acc": 0.977, "f1_macro": 0.977},
        "ruOpenBookQA": {"acc": 0.913, "f1_macro": 0.731},
    }
    ethics = {f"mcc_{q}_virtue": 0.1 for q in ("correct", "good", "ethical")}
    diagnostics = {
        "ruMMLU": 0.99,
        "ruEthics": ethics,
        "ruDetox": {"chrf_ref": 0.4},
        "ruHumanEval": {"pass@1": 0.1, "pass@5": 0.2, "pass@10": 0.3},
    }
    board = scoreboard.score("mera", {**seed, **diagnostics})
    assert round(board["aggregates"]["Total"], 3) == 0.554
    # Diagnostics never enter the total; without a single MERA score (ruEthics, ruDetox without J) they stay
    # as their metrics, so the chrF proxy is never shown as ruDetox's score.
    assert board["diagnostics"] == {
        "ruMMLU": 0.99,
        "ruEthics": ethics,
        "ruDetox": {"chrf_ref": 0.4},
        "ruHumanEval": pytest.approx(0.2),
    }
    assert scoreboard.score("mera", {**seed, "ruDetox": {"j": 0.3, "sta": 0.5}})["diagnostics"] == {
        "ruDetox": 0.3
    }
    assert board["columns"]["RCB"] == pytest.approx(0.561)
    # A missing base task leaves the total undefined rather than silently averaging fewer tasks.
    del seed["LCS"]
    assert scoreboard.score("mera", seed)["aggregates"]["Total"] is None


def test_columns_from_results_scales_and_maps_tasks():
    results = {"cl_ceval_valid_cot_zh": {"exact_match,last-match": 0.5}, "cl_mmlu": {"acc,none": 0.25}}
    cols = scoreboard.columns_from_results("control_llm", results)
    assert cols == {"CEvalC": 50.0, "MMLU": 25.0}


def test_unknown_card_and_column_errors():
    with pytest.raises(KeyError, match="Did you mean 'mera'"):
        scoreboard.get_card("merra")
    with pytest.raises(KeyError, match="not on the"):
        scoreboard.score("swallow_en", {"JMMLU": 0.5})


def test_markdown_and_json():
    board = scoreboard.score(
        "control_llm", {"CEvalC": 34.84, "CMMLUC": 37.37, "BBH": 64.43, "MMLU-Pro": 35.8}
    )
    table = scoreboard.markdown_table("control_llm", {"Concat16-Lerp": board})
    header, _, row = table.splitlines()
    assert header.startswith("| model | CEval | CEvalC |") and header.endswith("| C-Avg | O-Avg | Overall |")
    assert row.startswith("| Concat16-Lerp | - | 34.8 |") and row.endswith("| 37.1 | 45.9 | 41.5 |")
    assert json.loads(scoreboard.to_json(board)) == json.loads(json.dumps(board))


def test_mera_columns_from_results_use_main_metrics():
    results = {
        "cl_mera_rcb": {"acc,none": 0.6, "f1_macro,none": 0.4},
        "cl_mera_parus": {"acc,none": 0.9},
        "cl_mera_bps": {"acc,none": 0.5},
        "cl_mera_rucodeeval": {"pass@1,all": 0.1, "pass@5,all": 0.2, "pass@10,all": 0.6},
    }
    board = scoreboard.score("mera", scoreboard.columns_from_results("mera", results))
    assert board["columns"] == {"RCB": pytest.approx(0.5), "PARus": 0.9, "ruCodeEval": pytest.approx(0.3)}
    assert board["diagnostics"] == {"BPS": 0.5} and board["aggregates"]["Total"] is None


def test_meta_prompt_tasks_fill_the_meta_cards_columns():
    results = {
        "cl_mmlu": {"acc,none": 0.25},
        "cl_meta_mmlu_5shot": {"acc,none": 0.5},
        "cl_mmlu_pro": {"exact_match,custom-extract": 0.1},
    }
    assert scoreboard.columns_from_results("control_llm", results) == {"MMLU": 25.0, "MMLU-Pro": 10.0}
    # Meta's prompts fill their columns on a card of their own; the open prompts' MMLU is not taken for Meta's
    assert scoreboard.columns_from_results("control_llm_meta", results) == {"MMLU": 50.0}


def test_partial_columns_and_their_aggregates_are_marked():
    # ceval/val with a subject file missing: 2 of the card's 1346 questions; C-Avg still weighs CEvalC by 1346
    questions = {
        "CEvalC": {"scored": 2, "available": 2},
        "CMMLUC": {"scored": 11582, "available": 11582},
        "BBH": {"scored": 6511, "available": 6511},
        "MMLU-Pro": {"scored": 12032, "available": 12032},
    }
    columns = {"CEvalC": 34.84, "CMMLUC": 37.37, "BBH": 64.43, "MMLU-Pro": 35.8}
    board = scoreboard.score("control_llm", columns, questions)
    assert board["partial"] == ["CEvalC", "C-Avg", "Overall"]  # O-Avg is built from complete columns
    assert board["questions"]["CEvalC"] == {"scored": 2, "available": 2, "card": 1346}
    table = scoreboard.markdown_table("control_llm", {"lerp": board})
    assert "| lerp | - | 34.8* | - | 37.4 | 64.4 | - | 35.8 | 37.1* | 45.9 | 41.5* |" in table
    assert table.endswith(
        "\\* partial, not comparable with the card; questions scored: lerp: CEvalC 2 of 1346\n"
    )
    # A `limit` scores fewer questions than the data holds: partial too, on cards that state no counts as well
    en = scoreboard.score("swallow_en", {"MMLU": 0.5}, {"MMLU": {"scored": 200, "available": 14042}})
    assert en["partial"] == ["MMLU"] and en["questions"]["MMLU"]["card"] is None
    full = {**questions, "CEvalC": {"scored": 1346, "available": 1346}}
    assert scoreboard.score("control_llm", columns, full)["partial"] == []
