"""`launch/bench.py data` runs both paths on the same generated corpus and reports them side by side."""

from __future__ import annotations

import importlib.util
import json
import re

from tests.conftest import ROOT


def test_bench_data_reports_ours_and_the_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # restored after the run sets it to false
    monkeypatch.syspath_prepend(str(ROOT / "launch"))
    spec = importlib.util.spec_from_file_location("launch_bench", ROOT / "launch" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["data", "--tokens", "30000", "--seq-len", "256", "--workdir", str(tmp_path)]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (ours \(prepare\)|baseline \(datasets.map\)) \|(.*)$", out, re.M))
    assert set(rows) == {"ours (prepare)", "baseline (datasets.map)"}, out
    tokens = {name: int(cells.split("|")[2].replace(",", "")) for name, cells in rows.items()}
    assert len(set(tokens.values())) == 1 and 20_000 < tokens["ours (prepare)"] < 60_000  # same corpus, ~30k
    docs = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    assert {d["lang"] for d in docs} == {"zh", "ja", "en", "code"}
    assert "ours / baseline:" in out
    assert bench.main(["nonsense"]) == 2
