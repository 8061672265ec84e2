"""Fixtures for the run tests: compose the real conf/ in-process (fast) and point results at tmp."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from peftrepro.runs import plan as run_module  # registers the config resolvers

CONF_DIR = run_module.CONFIG_DIR
QUIET = ["train.progress=false"]


@pytest.fixture(scope="session")
def compose_config() -> Callable[..., DictConfig]:
    """compose_config(*overrides) -> the composed config, exactly as `python -m peftrepro.runs` sees it."""
    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    return _compose


@pytest.fixture(scope="session")
def selected_lrs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder whose learning-rate choice files (profile mini, every model in conf/model and
    the hub example `some/model`) give every (task, method) the rate 1e-3, as `make select-lr` would."""
    import json

    from peftrepro.methods import METHODS
    from peftrepro.selection import choice_path
    from peftrepro.tasks import TASKS

    root = tmp_path_factory.mktemp("selected")
    choices = {task: {method: {"lr": 1e-3, "at_edge": False, "grid": []} for method in METHODS} for task in TASKS}
    models = [path.stem for path in (CONF_DIR / "model").glob("*.yaml")] + ["some/model"]
    for model in models:
        path = choice_path(root, "mini", model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"profile": "mini", "model": model, "choices": choices}))
    return root


@pytest.fixture
def smoke(compose_config: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., DictConfig]:
    """A smoke config writing its records under tmp_path/results."""
    def _smoke(*overrides: str) -> DictConfig:
        return compose_config("profile=smoke", f"results_dir={tmp_path / 'results'}", *QUIET, *overrides)
    return _smoke


@pytest.fixture(autouse=True)
def no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    """E2E's METEOR and PTB tokenizer start a JVM (~15 s per evaluation): smoke tests use the
    metrics' documented pure-Python fallback instead (METEOR then missing from the record)."""
    from peftrepro.metrics.e2e import coco
    monkeypatch.setattr(coco, "java_available", lambda: False)
