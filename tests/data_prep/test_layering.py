"""data_prep/ never imports from train/ (DESIGN.md: the data layer comes before training, no back-edges)."""

from __future__ import annotations

import ast

from tests.conftest import ROOT


def test_data_prep_does_not_import_train():
    offenders = []
    for path in sorted((ROOT / "data_prep").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "train"
            ]
    assert offenders == []
