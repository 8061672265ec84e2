"""Synthetic run records (schema_version 1) written to a temporary results/runs tree."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def make_record(experiment: str, task: str, method: Mapping[str, Any], seed: int,
                metrics: Mapping[str, float] | None = None, *, status: str = "ok",
                minutes: int = 0, profile: str = "smoke", trainable: int = 1000,
                key: str | None = None, error_type: str = "RuntimeError") -> dict[str, Any]:
    key = key or f"{task}-{method['name']}-{abs(hash(json.dumps(method, sort_keys=True))) % 10**8}-s{seed}"
    failed = status != "ok"
    return {
        "schema_version": 1, "run_key": key, "experiment": experiment, "status": status,
        "error": {"type": error_type, "message": "boom", "traceback": "..."} if failed else None,
        "config": {"method": dict(method), "task": {"name": task, "eval_split": "validation"},
                   "decoding": {"length_penalty": 0.9}, "train": {"lr": 2e-4, "epochs": 2}},
        "seed": seed, "profile": profile,
        "model": {"name": "tiny-llama", "model_type": "llama", "source": "random"},
        "task": task, "method": dict(method), "metrics": {} if failed else dict(metrics or {}),
        "metrics_per_epoch": [], "best_epoch": None if failed else 1,
        "params": None if failed else {"trainable": trainable, "total": 10**6},
        "checkpoint_bytes": None,
        "data": {"train_examples": 32, "eval_examples": 4, "eval_split": "validation"},
        "timings": {}, "throughput": {}, "memory": {},
        "env": {"git": {"commit": "0123456789abcdef", "dirty": False}},
        "created_at": (T0 + timedelta(minutes=minutes)).isoformat(),
    }


@pytest.fixture(name="make_record")
def make_record_fixture() -> Callable[..., dict[str, Any]]:
    return make_record


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def write(runs_dir: Path) -> Callable[..., Path]:
    """write(record, name=None): store a record as runs/<experiment>/<name or run_key>/record.json."""

    def _write(record: Mapping[str, Any], name: str | None = None) -> Path:
        path = runs_dir / record["experiment"] / (name or record["run_key"]) / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record), encoding="utf-8")
        return path

    return _write
