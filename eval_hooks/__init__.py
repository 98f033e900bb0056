"""Benchmark tasks on local data, metrics lm-eval lacks, the distributed runner and the cards' scoreboards."""

import re
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lm-eval include_path of our task YAMLs


def task_names() -> set[str]:
    """Our tasks and suites (groups), read from the YAMLs' `task:` / `group:` lines without lm-eval, so a
    config can be checked at start-up in milliseconds (a test holds it equal to lm-eval's index)."""
    names = set()
    for path in TASKS_DIR.rglob("*.yaml"):
        names.update(
            re.findall(r"^(?:task|group):[ \t]*(\w[\w.-]*)[ \t]*$", path.read_text(encoding="utf-8"), re.M)
        )
    return names
