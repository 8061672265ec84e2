"""Runs that keep LoRA's factors (the `lora_factors` output option), and the export after the fact."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftrepro.methods.factors import FACTORS_FILE, load_factors
from peftrepro.runs import factors as factors_cli
from peftrepro.runs.execute import run_one
from peftrepro.runs.plan import plan_run

KEEP = "lora_factors={layers:[middle,last],weights:[W_q,W_v]}"
RUN = ("model=tiny-llama", "task=mnli", "method=lora", "method.weights=[W_q,W_v]", "method.r=4")


def test_a_run_keeps_the_factors_it_was_asked_for_under_the_same_key(smoke, tmp_path: Path) -> None:
    assert plan_run(smoke(*RUN, KEEP)).key == plan_run(smoke(*RUN)).key  # an output, not part of what is computed
    record = run_one(smoke(*RUN, KEEP))
    saved = load_factors(tmp_path / "results" / "runs" / "adhoc" / record["run_key"] / FACTORS_FILE)
    assert saved.layers == [0, 1] and {w for _, w in saved.factors} == {"W_q", "W_v"}  # 2 layers: middle is 0
    assert all(f.rank == 4 for f in saved.factors.values())
    assert set(saved.a_drift) == {"0.W_q", "0.W_v", "1.W_q", "1.W_v"} and all(v > 0 for v in saved.a_drift.values())


@pytest.mark.parametrize("overrides", [
    RUN,  # the option off (the default)
    ("model=tiny-llama", "task=mnli", "method=adapter_h", KEEP),  # not LoRA
    ("model=tiny-llama", "task=mnli", "method=lora", "method.weights=[W_q]", "method.r=4", KEEP),  # other matrices
    (*RUN, "lora_factors={layers:[last],weights:[W_q,W_v],ranks:[8,64]}"),  # another rank
], ids=["off", "adapter", "W_q-alone", "rank-4"])
def test_runs_the_option_does_not_select_keep_no_factors(smoke, tmp_path: Path, overrides) -> None:
    record = run_one(smoke(*overrides))
    assert not (tmp_path / "results" / "runs" / "adhoc" / record["run_key"] / FACTORS_FILE).exists()


def test_factors_are_exported_after_the_fact_from_the_adapter(smoke, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "results" / "runs"
    record = run_one(smoke(*RUN))
    folder = runs / "adhoc" / record["run_key"]
    assert factors_cli.main([str(runs), "--weights", "W_q"]) == 0  # adapts W_q and W_v: not selected
    assert "exported: 0" in capsys.readouterr().out and not (folder / FACTORS_FILE).exists()
    assert factors_cli.main([str(runs), "--layers", "last", "--ranks", ""]) == 0
    saved = load_factors(folder / FACTORS_FILE)
    assert list(saved.factors) == [(1, "W_q"), (1, "W_v")] and saved.a_drift == {}  # A's start: only while training
    assert factors_cli.main([str(runs)]) == 0 and "had them: 1" in capsys.readouterr().out
    (folder / FACTORS_FILE).unlink()
    (folder / "adapter.safetensors").unlink()  # weights stay on the machine that trained them
    assert factors_cli.main([str(runs)]) == 1
    assert f"no adapter on this machine: 1\n  adhoc/{record['run_key']}" in capsys.readouterr().out
