"""conf/experiment/*: every file composes, and its sweep fills exactly the cells of its table."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from peftrepro.report.records import parse_record
from peftrepro.report.specs import COUNT_KEYS, GPT3_TASKS, TABLES
from peftrepro.tasks import primary_metric

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def composer():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield lambda overrides: compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()


def sweep_grid(params) -> list[list[str]]:
    """The cartesian product of a hydra.sweeper.params mapping, as lists of overrides."""
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        axes.append([f"{key}={choice}" for choice in override.sweep_string_iterator()])
    return [list(combo) for combo in itertools.product(*axes)]


def record_of(experiment: str, cfg) -> object:
    """A finished run's record as a composed config would write it (no metrics: placement only)."""
    return parse_record(Path("x"), {"run_key": "k", "experiment": experiment, "status": "ok",
                                    "created_at": "2025-01-01T00:00:00+00:00", "seed": 0, "task": cfg.task.name,
                                    "method": OmegaConf.to_container(cfg.method, resolve=True),
                                    "metrics": {}, "params": {"trainable": 1}})


# experiment files that are stages of the tables (or a check beside one) rather than a table of their own
STAGES = {"baselines", "lr_search", "peft_budget"}


def test_every_table_has_an_experiment_file():
    assert {p.stem for p in (CONF / "experiment").glob("*.yaml")} == set(TABLES) | STAGES


@pytest.mark.parametrize("name", list(TABLES))
def test_sweep_fills_every_cell_of_its_table_once(composer, name):
    spec = TABLES[name]
    base = composer([f"experiment={name}"])
    assert base.experiment == name and str(base.hydra.mode) == "RunMode.MULTIRUN"
    assert "launcher" not in OmegaConf.to_yaml(base.hydra.sweeper)  # Hydra #2946: never in the file
    filled: list[tuple[str, str]] = []
    for overrides in sweep_grid(base.hydra.sweeper.params):
        cfg = composer([f"experiment={name}", *overrides])
        observations = spec.observe(record_of(name, cfg))
        assert observations is not None, f"{overrides} -> {cfg.method} has no place in {name}"
        filled += [(o.row, o.column) for o in observations]
    expected = {(row.key, col.key) for row in spec.rows for col in spec.columns if spec.applies(row.key, col.key)}
    assert set(filled) == expected  # and no run fills a cell shown n/a
    metric_cells = [cell for cell in filled if not set(cell) & set(COUNT_KEYS)]  # counts come from every run
    assert len(metric_cells) == len(set(metric_cells)), "two sweep points fill the same cell"


@pytest.mark.parametrize("name", list(TABLES))
def test_each_cell_names_the_overrides_of_the_run_that_fills_it(composer, name):
    """`run_of`'s setting is a command line (the REPORT prints it for extra seeds): it must compose
    and make a run of that task whose record lands in that very cell."""
    spec = TABLES[name]
    composed = {}  # one composition per run: a run fills several cells (Table 3: a row's five metrics)
    for row, column in ((r.key, c.key) for r in spec.rows for c in spec.columns):
        if set(COUNT_KEYS) & {row, column} or not spec.applies(row, column):
            continue
        task, setting = spec.run_of(row, column)
        if setting not in composed:
            composed[setting] = composer([f"experiment={name}", *shlex.split(setting)])
        cfg = composed[setting]
        assert cfg.task.name == task
        assert (row, column) in [(o.row, o.column) for o in spec.observe(record_of(name, cfg))], setting


@pytest.mark.parametrize("name", ["table_weight_type", "table_rank", "table_methods"])
def test_the_gpt3_tasks_are_those_the_gpt3_tables_sweep(composer, name):
    """The report's claims, plots and error scales of Tables 4-6 walk GPT3_TASKS: it must name every task
    these tables run, each with the primary metric its runs report."""
    base = composer([f"experiment={name}"])
    swept = {composer([f"experiment={name}", *overrides]).task.name for overrides in sweep_grid(base.hydra.sweeper.params)}
    assert {task.key for task in GPT3_TASKS} == swept
    assert all(task.metric == primary_metric(task.key) is not None for task in GPT3_TASKS)
    assert primary_metric("no_such_task") is None


@pytest.mark.parametrize("profile", ["smoke", "mini", "paper"])
def test_experiments_compose_with_every_profile(composer, profile):
    for name in TABLES:
        cfg = composer([f"experiment={name}", f"profile={profile}"])
        assert cfg.profile_name == profile and cfg.experiment == name


@pytest.mark.parametrize("name", list(TABLES))
def test_every_choice_under_a_table_is_a_key_of_its_runs_configs(composer, name):
    """A choice whose path no run of the table has would print "not recorded" forever (a stale key).
    (The smoke profile: its learning rate is set, not read from a selection this test has not made.)"""
    base = composer([f"experiment={name}", "profile=smoke"])
    configs = [composer([f"experiment={name}", "profile=smoke", *overrides])
               for overrides in sweep_grid(base.hydra.sweeper.params)]
    for choice in TABLES[name].choices:
        runs = [cfg for cfg in configs if not choice.methods or cfg.method.name in choice.methods]
        assert runs, f"{name}: no sweep point runs {choice.methods}, which choice {choice.path!r} is limited to"
        assert any(OmegaConf.select(cfg, choice.path) is not None for cfg in runs), \
            f"{name}: no sweep point's config has {choice.path!r} (choice {choice.what!r})"
