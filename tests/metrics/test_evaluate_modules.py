"""The five metrics as `evaluate` modules, loaded from the package with the hub switched off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftrepro.errors import ConfigError
from peftrepro.metrics import E2E_METRICS, MODULES_DIR, load_metric
from peftrepro.metrics.e2e import SINGLE_METRICS

PREDICTIONS = ["the eagle is a pub near the river", "the mill is cheap"]
REFERENCES = [["the eagle is a pub by the river", "a pub near the river"], ["the mill is a cheap place"]]

_LOAD_OFFLINE = f"""
import json
from peftrepro.metrics import load_metric
scores = {{}}
for name in ["bleu", "nist", "rouge_l", "cider"]:
    scores.update(load_metric(name).compute(predictions={PREDICTIONS!r}, references={REFERENCES!r}))
scores["meteor_module"] = type(load_metric("meteor")).__name__
print(json.dumps(scores))
"""


def test_every_metric_has_a_module_script() -> None:
    assert sorted(path.name for path in MODULES_DIR.iterdir() if (path / f"{path.name}.py").is_file()) == sorted(
        E2E_METRICS
    )


def test_modules_load_offline_and_agree_with_the_functions(tmp_path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-c", _LOAD_OFFLINE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert scores.pop("meteor_module") == "Meteor"
    for name, value in scores.items():
        assert value == pytest.approx(SINGLE_METRICS[name](PREDICTIONS, REFERENCES))


def test_unknown_metric_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="bleu, nist, meteor, rouge_l, cider"):
        load_metric("sacrebleu")
