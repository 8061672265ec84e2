"""The learning-rate selection: the ladder, the search rule (window, edge extension, ties), the
choice file, and the driver end to end on the smoke profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftrepro import selection
from peftrepro.errors import ConfigError, PeftReproError
from peftrepro.runs import lr_search
from peftrepro.runs.records import write_predictions


@pytest.mark.parametrize("start, step, lr", [(1e-3, 0, 1e-3), (1e-3, 1, 3e-3), (1e-3, -1, 3e-4), (1e-3, 2, 1e-2),
                                             (3e-4, 1, 1e-3), (1e-1, -3, 3e-3), (5e-5, None, None)])
def test_the_ladder_steps_by_a_factor_of_about_three(start, step, lr):
    if lr is None:
        with pytest.raises(ConfigError, match="not on the ladder"):
            selection.ladder(start, 0)
    else:
        assert selection.ladder(start, step) == lr


@pytest.mark.parametrize("scores, pending, best", [
    ({}, [-1, 0, 1], None),                                          # nothing run: the first window
    ({-1: 0.5, 0: None, 1: 0.4}, [0], None),                         # a point not run yet (or failed)
    ({-1: 0.5, 0: 0.7, 1: 0.6}, [], 0),                              # interior winner: decided
    ({-1: 0.8, 0: 0.7, 1: 0.6}, [-2], -1),                           # winner on the low edge: extend down
    ({-1: 0.5, 0: 0.7, 1: 0.9}, [2], 1),                             # ... on the high edge: extend up
    ({-2: 0.6, -1: 0.8, 0: 0.7, 1: 0.6}, [], -1),                    # extended, now interior
    ({-1: 0.7, 0: 0.7, 1: 0.6}, [-2], -1),                           # a tie goes to the smaller rate
    ({s: 0.1 * (s + 10) for s in range(-1, 5)}, [], 4),              # max_points reached: stop at the edge
    ({-1: float("nan"), 0: 0.5, 1: 0.4}, [], 0),                     # a diverged (NaN) score ranks last
])
def test_the_search_runs_a_window_and_extends_past_a_winning_edge(scores, pending, best):
    search = selection.Search(scores, width=3, max_points=6)
    assert search.pending() == pending
    if best is not None:
        assert search.best_step() == best
    assert search.decided == (best is not None and not pending)
    assert search.at_edge == (best == 4)


CHANCE = {-1: 0.33, 0: 0.35, 1: 0.31}  # a classifier's dev scores, none above its majority class


@pytest.mark.parametrize("scores, learned, max_points, pending", [
    (CHANCE, {-1: False, 0: False, 1: False}, 6, [-2, 2]),               # no rate learned: grow both ways
    (CHANCE, {-1: False, 0: False, 1: False}, 4, [-2]),                  # one rung left: the better edge's side
    ({**CHANCE, 1: 0.40}, {-1: False, 0: False, 1: False}, 4, [2]),      # ... which may be the higher one
    ({-2: 0.3, **CHANCE, 2: 0.6}, {-2: False, -1: False, 0: False, 1: False, 2: True}, 6, [3]),  # one learned: the usual rule
    ({-2: 0.3, **CHANCE, 2: 0.3}, dict.fromkeys(range(-2, 3), False), 5, []),  # max_points: decided, nothing learned
    (CHANCE, {}, 6, []),                                                 # no baseline known (E2E, WikiSQL): as before
])
def test_a_grid_where_no_rate_learned_grows_on_both_sides(scores, learned, max_points, pending):
    search = selection.Search(scores, width=3, max_points=max_points, learned=learned)
    assert search.pending() == pending
    assert search.any_learned == any(learned.get(step, True) for step in scores)


def test_the_report_replays_a_grid_grown_because_no_rate_learned():
    scores, learned = {**CHANCE, -2: 0.32, 2: 0.36, 5: 0.9}, dict.fromkeys([-2, -1, 0, 1, 2], False)
    state = selection.replay(scores, width=3, max_points=6, learned=learned)
    assert sorted(state.scores) == [-2, -1, 0, 1, 2] and state.pending() == [3]  # 2 scored better than -2


def test_a_choice_file_entry_says_when_no_rate_learned():
    entry = selection.summarise(CHANCE, 1e-3, 3, 3, learned={-1: False, 0: False, 1: False})
    assert entry["none_learned"] is True and entry["lr"] == 1e-3
    assert [point["learned"] for point in entry["grid"]] == [False, False, False]
    assert "none_learned" not in selection.summarise(CHANCE, 1e-3, 3, 3, learned={-1: False, 0: True, 1: False})


@pytest.mark.parametrize("correct, learned", [(40, False), (80, True), (None, None)])
def test_a_point_learned_when_it_beats_its_dev_splits_majority_class(tmp_path: Path, correct, learned):
    """100 dev examples, 40 % one label: 40 right is the majority class's score, 80 right beats it."""
    if correct is not None:
        labels = ["entailment"] * 40 + ["neutral"] * 30 + ["contradiction"] * 30
        write_predictions(tmp_path, [{"subset": "dev", "label": label, "correct": i < correct}
                                     for i, label in enumerate(labels)])
    assert lr_search.point_learned(tmp_path) is learned


@pytest.mark.parametrize("scores, steps, best, decided", [
    ({-1: 0.5, 0: 0.7, 1: 0.6, 3: 0.9}, [-1, 0, 1], 0, True),            # a point off the window is not part of it
    ({-2: 0.7, -1: 0.8, 0: 0.6, 1: 0.5}, [-2, -1, 0, 1], -1, True),      # the window grew down, then the winner
    ({-2: 0.9, -1: 0.8, 0: 0.7, 1: 0.6}, [-2, -1, 0, 1], -2, False),     # ... still on the edge: waits for -3
])
def test_the_report_replays_the_search_the_selection_ran(scores, steps, best, decided):
    state = selection.replay(scores, width=3, max_points=6)
    assert sorted(state.scores) == steps and state.best_step() == best and state.decided == decided


def test_a_choice_file_entry_names_the_rate_the_grid_and_the_dev_scores(tmp_path: Path):
    entry = selection.summarise({-1: 0.5, 0: 0.7, 1: 0.6}, 1e-3, 3, 6)
    assert entry == {"lr": 1e-3, "at_edge": False, "grid": [{"lr": 3e-4, "dev": 0.5}, {"lr": 1e-3, "dev": 0.7},
                                                             {"lr": 3e-3, "dev": 0.6}]}
    path = selection.choice_path(tmp_path, "mini", "hub/some model")
    lr_search.write_choices(path, "mini", "hub/some model", {("e2e", "lora"): entry})
    lr_search.write_choices(path, "mini", "hub/some model", {("mnli", "ft"): {**entry, "lr": 1e-4}})
    assert selection.selected_lr(path, "e2e", "lora") == 1e-3 and selection.selected_lr(path, "mnli", "ft") == 1e-4
    assert json.loads(path.read_text())["split"] == "dev"
    with pytest.raises(ConfigError, match="no learning rate has been selected for method 'ft' on task 'e2e'"):
        selection.selected_lr(path, "e2e", "ft")


def highest_smallest(scores: dict[float, float]) -> float:
    """The rate with the highest dev score, ties to the smaller rate (no smoke point learns, so the
    majority-class rule does not enter)."""
    return max(sorted(scores), key=lambda lr: (selection.ranked(scores[lr]), -lr))


def test_the_driver_selects_on_dev_records_the_grid_and_resumes(tmp_path: Path, capsys, monkeypatch):
    """Smoke profile with the selection switched on: three points (plus at most one extension) run
    as Hydra multiruns, the choice file gets the winner; a second call runs nothing."""
    args = ["--profile", "smoke", "--tasks", "mnli", "--methods", "lora", "--", "lr_selection=true",
            "lr_search.max_points=4", f"results_dir={tmp_path}", "train.progress=false"]
    assert lr_search.main(args) == 0
    [path] = (tmp_path / "learning_rates").glob("*.json")
    entry = json.loads(path.read_text())["choices"]["mnli"]["lora"]
    dev_scores = {point["lr"]: point["dev"] for point in entry["grid"]}
    assert len(dev_scores) >= 3 and entry["lr"] == highest_smallest(dev_scores)
    assert entry["metric"] == "accuracy_dev" and entry["configuration"] == "+experiment/methods_arm=lora_r8"
    runs = sorted((tmp_path / "runs" / "lr_search").glob("*/record.json"))
    assert len(runs) == len(dev_scores)
    for point in entry["grid"]:  # each dev score names the run that scored it
        record = json.loads((tmp_path / "runs" / point["run"] / "record.json").read_text())
        assert record["config"]["task"]["eval_split"] == "dev" and record["seed"] == 0
        assert record["metrics"]["accuracy_dev"] == point["dev"] and record["config"]["train"]["lr"] == point["lr"]
    before = {run: run.stat().st_mtime_ns for run in runs}
    monkeypatch.setattr(lr_search, "launch", lambda *a: pytest.fail(f"relaunched finished points: {a[2]}"))
    assert lr_search.main(args) == 0  # resumes: every point is finished (extensions too), nothing launches
    assert {run: run.stat().st_mtime_ns for run in runs} == before


def test_a_profile_without_selection_selects_nothing(tmp_path: Path, capsys):
    assert lr_search.main(["--profile", "smoke", "--tasks", "e2e", "--", f"results_dir={tmp_path}"]) == 0
    assert "nothing to select" in capsys.readouterr().out and not (tmp_path / "learning_rates").exists()


def test_an_unknown_task_is_one_clear_error(tmp_path: Path, capsys):
    assert lr_search.main(["--profile", "mini", "--tasks", "samsum", "--", f"results_dir={tmp_path}"]) == 2
    assert "no representatives for task 'samsum'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--profile", "minii", "--tasks", "e2e"], "Could not find 'profile/minii'"),
    (["--profile", "mini", "--tasks", "e2e", "--", "model=nosuch"], "Could not find 'model/nosuch'"),
])
def test_a_bad_profile_or_override_is_one_clear_error(args, message, capsys):
    assert lr_search.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: lr_search: the overrides ") and message in err and "Traceback" not in err


def test_unscored_points_stop_the_search_with_how_to_score_them(tmp_path: Path, capsys, monkeypatch):
    """Points made with scoring=later|auto have no dev score yet: relaunching them would only skip them."""
    monkeypatch.setattr(lr_search, "search_state", lambda *a: lr_search.SearchState(
        {-1: None, 0: None, 1: None}, {-1: "unscored", 0: "unscored", 1: "unscored"}, {}))
    monkeypatch.setattr(lr_search, "launch", lambda *a: pytest.fail("relaunched unscored points"))
    assert lr_search.main(["--profile", "mini", "--tasks", "e2e", "--methods", "lora", "--",
                           f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "e2e/lora: points are trained but unscored" in err and f"peftrepro score runs {tmp_path}" in err


@pytest.mark.parametrize("split", ["dev", "test"])
def test_a_point_scored_on_another_split_than_dev_stops_the_selection(tmp_path: Path, split):
    """The user's overrides come after the selection's own: task.eval_split=test among them must not
    silently select on the evaluation set."""
    (tmp_path / "record.json").write_text(json.dumps({"status": "ok", "data": {"eval_split": split},
                                                      "metrics": {"bleu": 0.5}}))
    if split == "dev":
        assert lr_search.point_score(tmp_path, "bleu") == (0.5, "ok")
    else:
        with pytest.raises(PeftReproError, match="evaluated on the 'test' split, not 'dev'"):
            lr_search.point_score(tmp_path, "bleu")
