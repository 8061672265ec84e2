"""Every config in conf/ composes, resolves and passes validation (new files are picked up by glob)."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftrepro.errors import ConfigError
from peftrepro.runs.plan import CONFIG_DIR, plan_run

GROUPS = ("model", "task", "method", "profile", "logger")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _installed(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True


def test_every_group_has_options() -> None:
    assert {"tiny-gpt2", "tiny-llama", "smollm2-135m", "gpt2-medium", "gpt2-large", "hub"} <= set(options("model"))
    assert set(options("task")) == {"e2e", "wikisql", "mnli"}
    assert set(options("method")) == {"lora", "qlora", "adapter_h", "adapter_l", "prefix_layer", "prefix_embed",
                                      "prompt_tuning", "ft", "ft_top2", "bitfit", "magnitude_pruning",
                                      "movement_pruning", "none", "peft_adapter"}
    assert set(options("profile")) == {"smoke", "mini", "paper"}
    assert set(options("logger")) == {"none", "wandb"}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_each_option_composes_and_resolves(compose_config, selected_lrs, group: str, option: str) -> None:
    extra = ["model.name_or_path=some/model"] if (group, option) == ("model", "hub") else []
    cfg = compose_config(f"{group}={option}", f"results_dir={selected_lrs}", *extra)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if group == "profile":
        assert resolved["profile_name"] == option
    else:
        assert resolved[group]["name"]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_each_experiment_composes_and_resolves(compose_config, selected_lrs, experiment: str) -> None:
    cfg = compose_config(f"experiment={experiment}", f"results_dir={selected_lrs}")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["experiment"] != "adhoc", "an experiment file must name its results folder"


@pytest.mark.parametrize(("profile", "task"), list(itertools.product(options("profile"), options("task"))))
def test_every_profile_task_method_is_a_valid_plan(compose_config, selected_lrs, profile: str, task: str) -> None:
    """All interpolations (paper / mini lookup tables, the selected learning rates) resolve, and method,
    task and train options pass the same validation a run does, for every method."""
    for method in options("method"):
        cfg = compose_config(f"profile={profile}", f"task={task}", f"method={method}", "data_root=null",
                             f"results_dir={selected_lrs}")
        if method == "peft_adapter":  # names the user's adapter directory: no default
            with pytest.raises(ConfigError, match="method peft_adapter needs method.path="):
                plan_run(cfg)
            continue
        if method == "qlora" and not _installed("bitsandbytes"):  # the qlora extra: one line naming it
            with pytest.raises(ConfigError, match=r"pip install 'peft-repro\[qlora\]'"):
                plan_run(cfg)
            continue
        plan = plan_run(cfg)
        assert plan.settings.lr > 0 and plan.key.startswith(f"{task}-")


def test_paper_profile_matches_table_11(compose_config) -> None:
    cfg = compose_config("profile=paper", "task=e2e", "method=lora", "model=gpt2-medium")
    c = OmegaConf.to_container(cfg, resolve=True)
    assert c["train"].items() >= {"lr": 2e-4, "batch_size": 8, "epochs": 5, "warmup_steps": 500,
                               "weight_decay": 0.01, "label_smoothing": 0.1}.items()
    assert c["method"].items() >= {"r": 4, "alpha": 32, "dropout": 0.1, }.items() and c["method"]["weights"] == ["W_q", "W_v"]
    assert c["decoding"]["num_beams"] == 10 and c["decoding"]["length_penalty"] == 0.9
    assert c["seeds"] == [0, 1, 2]


def test_paper_profile_gpt3_learning_rates_per_method(compose_config) -> None:
    table_12 = {"ft": 5e-6, "prefix_embed": 5e-4, "prefix_layer": 1e-4, "bitfit": 1.6e-3,
                "adapter_h": 1e-4, "lora": 2e-4}
    for method, lr in table_12.items():
        cfg = compose_config("profile=paper", "task=wikisql", f"method={method}")
        assert cfg.train.lr == lr and cfg.train.batch_size == 128 and cfg.train.weight_decay == 0.1


def test_hydra_outputs_stay_out_of_results_and_sweep_jobs_get_own_folder() -> None:
    hydra_cfg = OmegaConf.load(CONFIG_DIR / "hydra" / "default.yaml")
    assert hydra_cfg.job.chdir is False
    assert "${hydra.job.num}" in str(OmegaConf.to_container(hydra_cfg.sweep)["subdir"])
    for node in (hydra_cfg.run, hydra_cfg.sweep):
        assert str(OmegaConf.to_container(node)["dir"]).startswith("${project_path:${cache_dir}}/hydra/")


def test_mini_takes_each_learning_rate_from_the_selection(compose_config, selected_lrs, tmp_path: Path) -> None:
    cfg = compose_config("profile=mini", "task=e2e", "method=lora", f"results_dir={selected_lrs}")
    assert cfg.train.lr == 1e-3 and cfg.lr_selection is True
    from peftrepro.errors import ConfigError

    with pytest.raises(ConfigError, match="no learning rate has been selected for method 'lora' on task 'e2e'.*"
                                          "make select-lr"):
        plan_run(compose_config("profile=mini", "task=e2e", "method=lora", f"results_dir={tmp_path}"))


@pytest.mark.parametrize("step, lr", [(-1, 3e-4), (0, 1e-3), (1, 3e-3), (2, 1e-2)])
def test_an_lr_search_point_evaluates_on_dev_at_its_rung(compose_config, tmp_path: Path, step: int, lr: float) -> None:
    cfg = OmegaConf.to_container(compose_config("experiment=lr_search", "profile=mini", "task=mnli",
                                                "+experiment/methods_arm=lora_r8", f"lr_step={step}",
                                                f"results_dir={tmp_path}"), resolve=True)
    assert cfg["train"]["lr"] == lr and cfg["task"]["eval_split"] == "dev" and cfg["seed"] == 0
    assert cfg["method"]["r"] == 8 and cfg["experiment"] == "lr_search"


def test_every_lr_search_representative_composes(compose_config, tmp_path: Path) -> None:
    search = OmegaConf.load(CONFIG_DIR / "lr_search" / "default.yaml")
    for task, arms in search.representatives.items():
        for method, override in arms.items():
            cfg = compose_config("experiment=lr_search", "profile=mini", f"task={task}", override,
                                 f"results_dir={tmp_path}")
            assert cfg.method.name == method and plan_run(cfg).settings.lr == search.start[method]


@pytest.mark.parametrize("config, env, jobs, expected", [
    ({"threads": 3}, None, 1, (3, "threads=3")),
    ({"threads": "auto"}, "1", 1, (1, "OMP_NUM_THREADS")),
    ({"threads": "auto", "model": {"source": "random"}}, None, 1, (1, "a tiny random model: one thread")),
    ({"threads": "auto", "model": {"source": "gguf_package"}}, None, 1, (4, "4 cores / 1 run(s) at once")),
    ({"threads": "auto", "model": {"source": "hub"}}, None, 2, (2, "4 cores / 2 run(s) at once")),
    ({"threads": "auto", "model": {"source": "hub"}}, None, 8, (1, "4 cores / 8 run(s) at once")),
])
def test_the_cpu_thread_policy(monkeypatch, config, env, jobs, expected) -> None:
    import os

    from peftrepro.runs.plan import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if env:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert cpu_threads(config, jobs) == expected


@pytest.mark.parametrize("threads", [0, "two", True])
def test_a_bad_thread_count_is_one_clear_error(threads) -> None:
    from peftrepro.errors import ConfigError
    from peftrepro.runs.plan import cpu_threads

    with pytest.raises(ConfigError, match="threads=.* must be auto or an integer >= 1"):
        cpu_threads({"threads": threads})
