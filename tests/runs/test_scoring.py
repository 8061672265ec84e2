"""Decode now, score later (`scoring: later`, peftrepro.runs.scoring): for machines without Java.

The autouse `no_java` fixture (conftest) makes the E2E metrics use their pure-Python fallback in
both halves, so "scored later" and "scored at once" are compared under the same scorer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peftrepro import cli
from peftrepro.errors import ConfigError
from peftrepro.runs import records, scoring
from peftrepro.runs.execute import run_one
from peftrepro.tasks.e2e import E2ETask

# the fallback's warnings are expected here (tests/metrics asserts them), not news for the reader of the test log
pytestmark = pytest.mark.filterwarnings("ignore:Java not found:UserWarning")

ONE_EVAL = ("task=e2e", "method=lora", "train.eval_every_epoch=false")  # later cannot pick a best epoch


def test_scoring_later_saves_predictions_and_scores_them_without_training_again(smoke, tmp_path: Path) -> None:
    unscored = run_one(smoke(*ONE_EVAL, "scoring=later"))
    directory = tmp_path / "results" / "runs" / "adhoc" / unscored["run_key"]
    assert unscored["status"] == records.UNSCORED and unscored["metrics"] == {} and unscored["error"] is None
    rows = records.read_predictions(directory / records.PREDICTIONS_FILE)
    assert rows and all(row["references"] for row in rows)  # everything scoring needs travels with them
    assert not any("segment" in row for row in rows)
    assert not records.is_finished(directory)

    assert run_one(smoke(*ONE_EVAL, "scoring=later")) == unscored  # still deferred: left as it is
    scored = run_one(smoke(*ONE_EVAL))  # scoring=now: the saved predictions are scored, nothing trained
    assert scored["status"] == "ok" and scored["run_key"] == unscored["run_key"]
    assert scored["training"] == unscored["training"] and scored["created_at"] == unscored["created_at"]
    assert scored["timings"]["score_s"] >= 0 and scored["scoring"]["env"]["packages"]["torch"]
    assert scored["metrics_per_epoch"] == [{"epoch": 2, **scored["metrics"]}]

    at_once = run_one(smoke(*ONE_EVAL, f"results_dir={tmp_path / 'at_once'}"))
    assert at_once["run_key"] == scored["run_key"]  # `scoring` is not part of what a run computes
    assert scored["metrics"] == at_once["metrics"] and "bleu" in scored["metrics"]
    assert scored["eval_notes"] == at_once["eval_notes"]
    # scoring adds each MR's share of the scores to its row, as a run that scores at once writes it
    assert records.read_predictions(directory / records.PREDICTIONS_FILE) == records.read_predictions(
        tmp_path / "at_once" / "runs" / "adhoc" / at_once["run_key"] / records.PREDICTIONS_FILE)


def test_scoring_later_is_scoring_now_for_tasks_scored_in_python(smoke) -> None:
    assert run_one(smoke("task=mnli", "method=lora", "train.eval_every_epoch=false", "scoring=later"))["status"] == "ok"


def test_scoring_auto_defers_only_where_the_scorer_lacks_its_tools(smoke, monkeypatch) -> None:
    monkeypatch.setattr(E2ETask, "missing_scoring_tools", lambda self: [])
    assert run_one(smoke(*ONE_EVAL, "scoring=auto", "seed=1"))["status"] == "ok"
    monkeypatch.setattr(E2ETask, "missing_scoring_tools", lambda self: ["java (test)"])
    assert run_one(smoke(*ONE_EVAL, "scoring=auto", "seed=2"))["status"] == records.UNSCORED
    with pytest.raises(ConfigError, match="cannot pick the best epoch"):
        run_one(smoke("task=e2e", "scoring=auto"))  # smoke evaluates every epoch


@pytest.mark.parametrize(("overrides", "message"), [
    (("task=e2e", "scoring=later"), "cannot pick the best epoch"),  # smoke evaluates every epoch
    (("scoring=sometime",), r"scoring='sometime' must be one of \('now', 'later', 'auto'\)"),
])
def test_bad_scoring_choice_is_one_clear_error_and_nothing_is_written(smoke, tmp_path: Path, overrides,
                                                                      message) -> None:
    with pytest.raises(ConfigError, match=message):
        run_one(smoke(*overrides))
    assert not (tmp_path / "results").exists()


def test_cli_scores_every_unscored_run_and_refuses_without_java(smoke, tmp_path: Path, monkeypatch, capsys) -> None:
    unscored = run_one(smoke(*ONE_EVAL, "scoring=later"))
    runs = tmp_path / "results" / "runs"
    directory = runs / "adhoc" / unscored["run_key"]
    before = (directory / records.RECORD_FILE).read_bytes()

    with monkeypatch.context() as patch:
        patch.setattr(E2ETask, "missing_scoring_tools", lambda self: ["java (test)"])
        assert scoring.main([str(runs)]) == 1
    assert "lacks java (test)" in capsys.readouterr().err
    assert (directory / records.RECORD_FILE).read_bytes() == before  # nothing half-written

    assert scoring.main([str(runs)]) == 0
    assert "scored 1 of 1" in capsys.readouterr().out
    assert records.read_record(directory)["status"] == "ok"
    assert cli.main(["score", "runs", str(runs)]) == 0 and "scored 0 of 0" in capsys.readouterr().out
    assert scoring.main([str(tmp_path / "nowhere")]) == 2


def test_cli_leaves_a_run_another_process_holds_to_it(smoke, tmp_path: Path, capsys) -> None:
    unscored = run_one(smoke(*ONE_EVAL, "scoring=later"))
    runs = tmp_path / "results" / "runs"
    directory = runs / "adhoc" / unscored["run_key"]
    before = (directory / records.RECORD_FILE).read_bytes()
    with records.claimed(tmp_path / "results", "adhoc", unscored["run_key"]) as mine:  # e.g. a forced rerun
        assert mine
        assert scoring.main([str(runs)]) == 0
    assert f"scored 0 of 1 unscored run(s); 1 left to the process making them: {unscored['run_key']}" \
        in capsys.readouterr().out
    assert (directory / records.RECORD_FILE).read_bytes() == before
    assert scoring.main([str(runs)]) == 0 and records.read_record(directory)["status"] == "ok"
