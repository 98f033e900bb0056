"""Benchmark tasks on local data, metrics lm-eval lacks, the distributed runner and the cards' scoreboards."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lm-eval include_path of our task YAMLs
