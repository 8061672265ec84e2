"""Tasks: datasets, prompts, encoding, decoding and scoring for E2E, WikiSQL and MultiNLI.

    task = make_task("e2e", data_root="/path/to/data", options={"max_eval_examples": 8})
    rows = task.load_split(task.options.train_split, task.options.max_train_examples)
    encoded = task.encode(rows[0], tokenizer, NO_PROMPT_WRAP, task.options.max_length)
    result = task.evaluate(model, tokenizer, task.load_split(task.options.eval_split), NO_PROMPT_WRAP, decoding)

Each task implements the `Task` protocol of `peftrepro.interfaces`; its options (a frozen
dataclass, `task.options`) are documented on `E2EOptions`, `WikiSQLOptions` and `MNLIOptions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from peftrepro.errors import ConfigError
from peftrepro.interfaces import Task
from peftrepro.tasks.e2e import E2EOptions, E2ETask
from peftrepro.tasks.fixtures import write_fixtures
from peftrepro.tasks.mnli import MNLIOptions, MNLITask
from peftrepro.tasks.wikisql import WikiSQLOptions, WikiSQLTask

TASKS: dict[str, type] = {"e2e": E2ETask, "wikisql": WikiSQLTask, "mnli": MNLITask}


def primary_metric(name: str) -> str | None:
    """The metric task `name`'s tables report first (None for an unknown task)."""
    return getattr(TASKS.get(name), "primary_metric", None)


def make_task(name: str, data_root: str | Path | None, options: Mapping[str, Any] | None = None) -> Task:
    """The task `name` reading `data_root` (None: $PEFTREPRO_DATA_ROOT, else the hub)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    options = dict(options or {})
    if options.get("name", name) != name:
        raise ConfigError(f"make_task({name!r}) got options for task {options['name']!r}")
    options.pop("name", None)  # a Hydra task group may carry its own name beside the options
    return TASKS[name](data_root, options)


__all__ = ["TASKS", "make_task", "primary_metric", "write_fixtures", "E2EOptions", "WikiSQLOptions", "MNLIOptions",
           "E2ETask", "WikiSQLTask", "MNLITask"]
