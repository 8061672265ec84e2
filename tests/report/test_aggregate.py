"""Aggregation: records -> paper tables (mean ± std, dedup, missing/failed/corrupt records)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from peftrepro.cli import main as cli_main
from peftrepro.errors import DataError
from peftrepro.report import render as aggregate
from peftrepro.report.aggregate import main
from peftrepro.report.cells import build_table
from peftrepro.report.paper import (
    REQUIRED_COLUMNS,
    load_paper,
    paper_value,
    printed_spread,
    to_paper_unit,
)
from peftrepro.report.records import Record, format_count, load_records
from peftrepro.report.specs import TABLES

QV4 = {"name": "lora", "weights": ["W_q", "W_v"], "r": 4, "ranks": None, "alpha": 32}
Q4 = {"name": "lora", "weights": ["W_q"], "r": 4, "ranks": None, "alpha": 32}


@pytest.fixture
def rank_record(make_record):
    def build(seed: int, accuracy: float, method=QV4, task: str = "wikisql", **kw):
        metric = "lf_accuracy" if task == "wikisql" else "accuracy_m"
        return make_record("table_rank", task, method, seed, {metric: accuracy}, **kw)
    return build


# ---- paper.csv -------------------------------------------------------------------------------

def test_every_paper_row_loads_with_numeric_values_and_a_source():
    paper = load_paper()
    assert list(paper.columns) == list(REQUIRED_COLUMNS)
    assert paper["value"].map(math.isfinite).all()
    assert (paper["printed"] != "").all() and paper["source"].str.contains("paper-reference.md").all()
    assert {"table1", "table3", "table4", "table5", "table6", "table15"} <= set(paper["table"])


@pytest.mark.parametrize("table,row,column,value", [
    ("table5", "W_q r=8", "mnli", 91.0),       # the paper's own inconsistency ...
    ("table6", "W_q r=8", "mnli", 90.7),       # ... both kept
    ("table6", "W_q,W_v r=64", "wikisql", 73.5),
    ("table15", "LoRA r_q=r_v=64", "wikisql", 73.6),
    ("table5", "W_q,W_v r=4", "wikisql", 73.7),
    ("table3", "GPT-2 M (LoRA)", "bleu", 70.4),
    ("table3", "GPT-2 M (FT^Top2)", "trainable_params", 25.19),
    ("table15", "PrefixLayer l_p=8,l_i=8", "trainable_params", 20.2),
    ("table15", "Fine-Tune", "trainable_params", 175000.0),
    ("table1", "Adapter^H", "bs1_seq128", 25.8),
])
def test_paper_values(table, row, column, value):
    assert paper_value(table, row, column) == pytest.approx(value)


def test_inconsistent_cells_say_so_in_their_notes():
    paper = load_paper()
    flagged = paper[paper["note"].str.contains("INCONSISTENT")]
    assert len(flagged) == 4


@pytest.mark.parametrize("text,match", [
    ("table,row,column,value,printed,source\nt,r,c,1,1,s\n", "lacks column"),
    ("table,row,column,value,printed,source,note\nt,r,c,73.7%,73.7%,s,\n", "not a number"),
    ("table,row,column,value,printed,source,note\nt,r,c,1,1,s,\nt,r,c,2,2,s,\n", "more than once"),
])
def test_bad_paper_file_gives_one_clear_error(tmp_path: Path, text: str, match: str):
    path = tmp_path / "paper.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_paper(str(path))


@pytest.mark.parametrize("printed,spread", [("70.4±.1", 0.1), ("1449.4 ± 0.8", 0.8), ("73.7", None)])
def test_printed_spread(printed, spread):
    assert printed_spread(printed) == spread


@pytest.mark.parametrize("metric,raw,paper", [("bleu", 0.704, 70.4), ("nist", 8.85, 8.85),
                                               ("cider", 2.53, 2.53), ("lf_accuracy", 0.737, 73.7)])
def test_raw_metrics_are_scaled_to_the_paper_unit(metric, raw, paper):
    assert to_paper_unit(metric, raw) == pytest.approx(paper)


# ---- cells -----------------------------------------------------------------------------------

def test_cell_is_mean_and_std_over_seeds_in_paper_units(runs_dir, write, rank_record):
    for seed, accuracy in enumerate([0.5, 0.6, 0.7]):
        write(rank_record(seed, accuracy))
    cell = build_table(TABLES["table_rank"], runs_dir).stats("wikisql|W_q,W_v", "r=4")
    assert cell["mean"] == pytest.approx(60.0) and cell["std"] == pytest.approx(10.0)
    assert cell["n"] == 3 and cell["seeds"] == [0, 1, 2] and cell["status"] == "ok"
    assert cell["paper"] == pytest.approx(73.7)


@pytest.mark.parametrize("older_name,newer_name", [("a", "b"), ("b", "a")])  # path order is irrelevant
def test_duplicate_run_key_latest_record_wins(runs_dir, write, older_name, newer_name, rank_record):
    write(rank_record(0, 0.1, key="same", minutes=0), name=older_name)
    write(rank_record(0, 0.9, key="same", minutes=5), name=newer_name)
    result = build_table(TABLES["table_rank"], runs_dir)
    cell = result.stats("wikisql|W_q,W_v", "r=4")
    assert cell["n"] == 1 and cell["mean"] == pytest.approx(90.0)
    assert result.superseded == 1
    assert build_table(TABLES["table_weight_type"], runs_dir).superseded == 0  # counted where it happened


def test_a_run_key_shared_by_two_experiments_is_a_cell_in_both(runs_dir, write, make_record):
    # Table 4's LoRA r_q=r_v=1 is written like Table 6's W_q,W_v r=1, so a copy has the same run key
    lora_r1 = {"name": "lora", "weights": ["W_q", "W_v"], "r": 1, "ranks": None, "alpha": 32}
    for experiment in ("table_rank", "table_methods"):
        write(make_record(experiment, "mnli", lora_r1, 0, {"accuracy_m": 0.54}, key="same-key"))
    rank, methods = build_table(TABLES["table_rank"], runs_dir), build_table(TABLES["table_methods"], runs_dir)
    assert rank.stats("mnli|W_q,W_v", "r=1")["mean"] == pytest.approx(54.0)
    assert methods.stats("lora_r1", "mnli")["mean"] == pytest.approx(54.0)
    assert rank.superseded == methods.superseded == 0


@pytest.mark.parametrize("rerun", [False, True])
def test_a_copy_made_before_its_original_was_rerun_is_left_out_and_named(runs_dir, write, make_record, rerun):
    """A copy carries its original's created_at; once the original is rerun (force=true) the copy's numbers
    are the earlier run's while the predictions it reads are the new run's, so no cell may use it."""
    lora_r1 = {"name": "lora", "weights": ["W_q", "W_v"], "r": 1, "ranks": None, "alpha": 32}
    original = make_record("table_methods", "mnli", lora_r1, 0, {"accuracy_m": 0.54}, key="lora-r1")
    copy = {**make_record("table_rank", "mnli", lora_r1, 0, {"accuracy_m": 0.54}, key="lora-r1"),
            "reused_from": {"experiment": "table_methods", "run_key": "lora-r1"}}
    write(copy)
    write(make_record("table_methods", "mnli", lora_r1, 0, {"accuracy_m": 0.61}, key="lora-r1", minutes=5)
          if rerun else original)
    rank = build_table(TABLES["table_rank"], runs_dir)
    if not rerun:
        assert rank.stats("mnli|W_q,W_v", "r=1")["mean"] == pytest.approx(54.0) and not rank.problems
        return
    assert rank.stats("mnli|W_q,W_v", "r=1")["n"] == 0
    assert [(problem.kind, problem.reason) for problem in rank.problems] == [(
        "stale copy", "a copy of table_methods/lora-r1 made before that run was rerun: left out, its numbers are the "
        "earlier run's; the next sweep of table_rank copies it again")]
    page = aggregate.render_markdown(rank, [])
    assert f"- STALE COPY {runs_dir / 'table_rank' / 'lora-r1' / 'record.json'}: a copy of" in page
    assert "0 unreadable file(s), 1 stale copy\n" in page  # out of date, not unreadable
    assert build_table(TABLES["table_methods"], runs_dir).stats("lora_r1", "mnli")["mean"] == pytest.approx(61.0)


def test_same_cell_and_seed_under_a_new_run_key_replaces_the_old_run(runs_dir, write, rank_record):
    # e.g. the profile changed between two sweeps: new run keys, same cells and seeds
    write(rank_record(0, 0.1, key="old-config", minutes=0))
    write(rank_record(0, 0.9, key="new-config", minutes=5))
    result = build_table(TABLES["table_rank"], runs_dir)
    cell = result.stats("wikisql|W_q,W_v", "r=4")
    assert cell["n"] == 1 and cell["mean"] == pytest.approx(90.0)
    assert result.replaced == 1 and [r.run_key for r in result.records] == ["new-config"]


def test_missing_cells_are_marked_and_listed(runs_dir, write, tmp_path, rank_record):
    write(rank_record(0, 0.5))
    result = build_table(TABLES["table_rank"], runs_dir)
    assert result.stats("mnli|W_q", "r=1")["status"] == "missing"
    assert (result.cells["status"] == "missing").sum() == len(result.cells) - 1
    markdown = (aggregate.write_table(result, tmp_path / "out", plots=False)[1]).read_text()
    assert "MISSING MultiNLI (±0.1%) / W_q × r=1: no record (`make table-rank PROFILE=smoke` makes it)" in markdown
    assert "| —" in markdown or "— ·" in markdown


def test_failed_run_is_shown_as_dash_with_its_error(runs_dir, write, tmp_path, rank_record):
    write(rank_record(0, 0.0, status="failed"))
    result = build_table(TABLES["table_rank"], runs_dir)
    cell = result.stats("wikisql|W_q,W_v", "r=4")
    assert cell["status"] == "failed" and cell["n"] == 0
    assert any("RuntimeError: boom" in p for p in cell["problems"])
    markdown = aggregate.render_markdown(result, [])
    assert "FAILED WikiSQL (±0.5%) / W_q,W_v × r=4: run failed (RuntimeError: boom)" in markdown


def test_one_failed_seed_makes_a_partial_cell(runs_dir, write, rank_record):
    write(rank_record(0, 0.5))
    write(rank_record(1, 0.0, status="failed"))
    cell = build_table(TABLES["table_rank"], runs_dir).stats("wikisql|W_q,W_v", "r=4")
    assert cell["status"] == "partial" and cell["n"] == 1 and cell["seeds"] == [0]
    text = aggregate.format_cell(TABLES["table_rank"], cell, 2)
    assert text.startswith("50.0 (n=1 of 2)")


def test_expected_seeds_from_the_command_line_mark_partial_cells(runs_dir, write, rank_record):
    write(rank_record(0, 0.5))
    result = build_table(TABLES["table_rank"], runs_dir, seeds=[0, 1, 2])
    assert result.stats("wikisql|W_q,W_v", "r=4")["status"] == "partial"


def test_not_applicable_run_is_an_na_cell(runs_dir, write, make_record):
    write(make_record("table_methods", "wikisql", {"name": "bitfit"}, 0, status="not_applicable",
                      error_type="NotApplicableError"))
    result = build_table(TABLES["table_methods"], runs_dir)
    assert result.stats("bitfit", "wikisql")["status"] == "n/a"
    assert aggregate.format_cell(TABLES["table_methods"], result.stats("bitfit", "wikisql"), 1).startswith("n/a")
    count = result.stats("bitfit", "trainable_params")
    assert count["status"] == "n/a" and count["problems"] == ["not applicable (NotApplicableError: boom)"]


def test_header_counts_each_status_and_skips_the_data_of_runs_that_loaded_none(runs_dir, write, make_record):
    write(make_record("table_methods", "mnli", {"name": "lora", "ranks": {"W_q": 8, "W_v": 8}}, 0, {"accuracy_m": 50}))
    not_applicable = make_record("table_methods", "mnli", {"name": "bitfit"}, 0, status="not_applicable")
    write({**not_applicable, "data": {"train_examples": None, "eval_examples": None}})
    write(make_record("table_methods", "mnli", {"name": "ft"}, 0, status="failed"))
    header = "\n".join(aggregate.header_lines(build_table(TABLES["table_methods"], runs_dir)))
    assert "- Records: 1 ok, 1 failed, 1 not applicable, 0 unscored;" in header
    assert "- Data: mnli: 32 train / 4 eval (validation)\n" in header  # once: the n/a run loaded nothing


def test_choices_are_read_per_method_and_name_the_methods_where_values_differ(runs_dir, write, make_record):
    lora = make_record("table_methods", "mnli", {"name": "lora", "ranks": {"W_q": 8, "W_v": 8},
                                                 "init": "kaiming_uniform"}, 0, {"accuracy_m": 50})
    prefix = make_record("table_methods", "mnli", {"name": "prefix_layer", "prefix_length": 8, "infix_length": 8,
                                                   "init": "real_tokens"}, 0, {"accuracy_m": 40})
    prefix["config"]["train"]["lr"] = 0.1
    bitfit = make_record("table_methods", "mnli", {"name": "bitfit"}, 0, status="not_applicable")  # trained nothing
    bitfit["config"]["train"]["lr"] = 0.003
    write(lora), write(prefix), write(bitfit)
    lines = aggregate.choice_lines(build_table(TABLES["table_methods"], runs_dir))
    assert "- learning rate (`train.lr`): 2e-4 (lora), 1e-1 (prefix_layer)" in lines
    assert any(line.startswith("- epochs (`train.epochs`): 2") for line in lines)  # one value: no method list
    init = [line for line in lines if "(`method.init`)" in line]
    assert len(init) == 2 and init[0].endswith(': "kaiming_uniform"') and init[1].endswith(': "real_tokens"')
    assert "- eval examples (limit) (`task.max_eval_examples`): not recorded" in lines  # no such key


def test_a_recorded_null_limit_reads_all_not_unrecorded(runs_dir, write, make_record):
    record = make_record("table_methods", "mnli", {"name": "ft"}, 0, {"accuracy_m": 50})
    record["config"]["task"]["max_eval_examples"] = None
    write(record)
    lines = aggregate.choice_lines(build_table(TABLES["table_methods"], runs_dir))
    assert "- eval examples (limit) (`task.max_eval_examples`): all" in lines


def test_a_choice_of_methods_that_have_not_run_yet_says_so_not_that_it_is_unrecorded(runs_dir, write, make_record):
    write(make_record("table_pruning", "mnli", {"name": "magnitude_pruning", "remaining": 0.8}, 0, {"accuracy_m": 50}))
    lines = aggregate.choice_lines(build_table(TABLES["table_pruning"], runs_dir))
    movement = [line for line in lines if "(`method.score" in line]  # scores and score_lr: movement's alone
    assert len(movement) == 2 and all(line.endswith("`): no run of movement_pruning yet") for line in movement)


def test_config_error_failure_is_a_failed_cell(runs_dir, write, make_record):
    write(make_record("table_methods", "wikisql", {"name": "bitfit"}, 0, status="failed",
                      error_type="ConfigError"))
    assert build_table(TABLES["table_methods"], runs_dir).stats("bitfit", "wikisql")["status"] == "failed"


@pytest.mark.parametrize("recorded, scores", [({}, "sum"), ({"scores": "adam"}, "adam")])
def test_a_movement_record_reads_with_the_scores_it_ran(runs_dir, write, make_record, recorded, scores):
    """A record made before `scores` existed ran Eq. 3's plain sum: its method and its config say so."""
    write(make_record("lr_search", "mnli", {"name": "movement_pruning", "remaining": 0.8, **recorded}, 0))
    (record,), _, _ = load_records(runs_dir)
    assert record.method["scores"] == scores and record.get("method.scores") == scores


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"run_key": "x"}),
                                     json.dumps({"run_key": "x", "experiment": "e", "status": "ok",
                                                 "created_at": "not a date"})])
def test_corrupt_record_is_reported_and_skipped(runs_dir, write, content, rank_record):
    write(rank_record(0, 0.5))
    bad = runs_dir / "table_rank" / "broken" / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(content, encoding="utf-8")
    records, problems, _ = load_records(runs_dir)
    assert len(records) == 1
    assert [p.path for p in problems] == [bad]
    markdown = aggregate.render_markdown(build_table(TABLES["table_rank"], runs_dir), [])
    assert f"UNREADABLE {bad}" in markdown


def test_profiles_are_never_mixed(runs_dir, write, rank_record):
    write(rank_record(0, 0.5, profile="smoke", minutes=0, key="a"))
    write(rank_record(0, 0.9, profile="mini", minutes=1, key="b"))
    latest = build_table(TABLES["table_rank"], runs_dir).stats("wikisql|W_q,W_v", "r=4")
    smoke = build_table(TABLES["table_rank"], runs_dir, profile="smoke").stats("wikisql|W_q,W_v", "r=4")
    assert latest["mean"] == pytest.approx(90.0) and smoke["mean"] == pytest.approx(50.0)
    header = aggregate.header_lines(build_table(TABLES["table_rank"], runs_dir, profile="smoke"))
    assert "records of profile(s) mini also exist" in header[0]


def test_record_outside_the_grid_is_listed_not_placed(runs_dir, write, rank_record):
    write(rank_record(0, 0.5, method={**QV4, "r": 3}))
    result = build_table(TABLES["table_rank"], runs_dir)
    assert len(result.unplaced) == 1
    assert any("NOT PLACED" in line for line in aggregate.incomplete_lines(result))


@pytest.mark.parametrize("method,row", [
    ({"name": "lora", "weights": ["W_q", "W_v"], "r": 4, "ranks": None}, "lora"),
    ({"name": "lora", "weights": ["W_q"], "r": 1, "ranks": {"W_v": 4, "W_q": 4}}, "lora"),  # ranks win
    ({"name": "adapter_l", "r": 224}, "adapter_l_large"),
    ({"name": "ft_top", "k": 2}, "ft_top2"),
])
def test_e2e_rows_follow_the_method_config_and_scale_metrics(runs_dir, write, method, row, make_record):
    write(make_record("table_e2e", "e2e", method, 0,
                      {"bleu": 0.7, "nist": 8.5, "meteor": 0.46, "rouge_l": 0.71, "cider": 2.4},
                      trainable=393_216))
    result = build_table(TABLES["table_e2e"], runs_dir)
    assert result.stats(row, "bleu")["mean"] == pytest.approx(70.0)
    assert result.stats(row, "nist")["mean"] == pytest.approx(8.5)
    assert result.stats(row, "trainable_params")["mean"] == pytest.approx(0.393216)


def test_metric_absent_from_record_is_a_listed_gap(runs_dir, write, make_record):
    write(make_record("table_e2e", "e2e", QV4, 0, {"bleu": 0.7, "nist": 8.5, "rouge_l": 0.7, "cider": 2.4}))
    cell = build_table(TABLES["table_e2e"], runs_dir).stats("lora", "meteor")
    assert cell["status"] == "failed" and "meteor" in cell["problems"][0]


def test_unscored_run_is_a_dash_that_says_how_to_score_it(runs_dir, write, make_record):
    record = make_record("table_e2e", "e2e", QV4, 0, trainable=393_216)
    write(record | {"status": "unscored", "metrics": {}})  # scoring=later: predictions saved, no metrics
    result = build_table(TABLES["table_e2e"], runs_dir, seeds=[0])
    cell = result.stats("lora", "bleu")
    assert cell["status"] == "unscored" and aggregate.format_cell(TABLES["table_e2e"], cell, 1).startswith("—")
    assert result.stats("lora", "trainable_params")["mean"] == pytest.approx(0.393216)  # it trained: count known
    assert "lora" in set(result.incomplete["row"])  # --strict: a table with unscored cells is not complete
    assert "UNSCORED" in aggregate.render_markdown(result, []) and "python -m peftrepro.runs.scoring" in cell["problems"][0]


# ---- the command -----------------------------------------------------------------------------

def test_main_writes_every_table_and_strict_fails_on_gaps(runs_dir, write, tmp_path, rank_record):
    for seed in (0, 1):
        write(rank_record(seed, 0.5 + seed / 10))
        write(rank_record(seed, 0.4, method=Q4))
    out = tmp_path / "tables"
    assert main(["--runs", str(runs_dir), "--out", str(out)]) == 0
    for name in TABLES:
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    assert (out / "table_rank.png").stat().st_size > 0 and (out / "table_weight_type.png").is_file()
    for name in TABLES:  # a page links its figure exactly when one is drawn for it
        figure = out / f"{name}.png"
        assert (f"Plot: [`{figure.name}`]({figure.name})" in (out / f"{name}.md").read_text()) == figure.is_file()
    assert main(["--runs", str(runs_dir), "--out", str(out), "--strict", "--no-plots"]) == 1

    csv = pd.read_csv(out / "table_rank.csv")
    assert list(csv.columns[:2]) == ["Dataset", "Weight Type"] and len(csv) == 6
    row = csv[(csv["Dataset"] == "WikiSQL (±0.5%)") & (csv["Weight Type"] == "W_q,W_v")].iloc[0]
    assert row["r=4 mean"] == pytest.approx(55.0) and row["r=4 n"] == 2 and row["r=4 paper"] == 73.7

    markdown = (out / "table_rank.md").read_text()
    assert "55.0 ± 7.1 (n=2) · paper 73.7" in markdown
    assert "Profile: smoke" in markdown and "tiny-llama" in markdown and "0123456789" in markdown
    assert "Paper's claims on our numbers" in markdown


def test_main_on_an_empty_runs_dir_writes_empty_tables(tmp_path):
    out = tmp_path / "tables"
    assert main(["--runs", str(tmp_path / "none"), "--out", str(out), "--table", "table_e2e"]) == 0
    assert "MISSING" in (out / "table_e2e.md").read_text()


def test_the_peftrepro_command_passes_aggregate_its_options(tmp_path, capsys):
    out = tmp_path / "tables"
    assert cli_main(["aggregate", "--runs", str(tmp_path / "none"), "--out", str(out), "--table", "table_e2e",
                     "--no-plots"]) == 0
    assert [p.name for p in sorted(out.iterdir())] == ["table_e2e.csv", "table_e2e.md"]
    with pytest.raises(SystemExit):
        cli_main(["aggregate", "--help"])
    assert "--strict" in capsys.readouterr().out  # aggregate's own help


def test_parameter_cells_gather_both_tasks(runs_dir, write, make_record):
    # MNLI may train a different number of parameters (e.g. a head): both counts are shown
    for task, metric, trainable in (("wikisql", "lf_accuracy", 1000), ("mnli", "accuracy_m", 1500)):
        write(make_record("table_methods", task, {"name": "adapter_h", "r": 8}, 0, {metric: 0.5},
                          trainable=trainable))
    result = build_table(TABLES["table_methods"], runs_dir)
    cell = result.stats("adapter_h_r8", "trainable_params")
    assert sorted(cell["values"]) == [0.001, 0.0015]
    assert aggregate.format_cell(TABLES["table_methods"], cell, 1).startswith("1.00K / 1.50K · paper 40.1 M")


def test_a_cell_of_one_seed_has_no_error_bar_rather_than_a_zero_one() -> None:
    from peftrepro.report.plots import seed_error_bars

    cells = [{"n": 2, "std": 1.5}, {"n": 1, "std": 0.0}, {"n": 0, "std": float("nan")}]
    spread = seed_error_bars(cells)
    assert spread[0] == 1.5 and math.isnan(spread[1]) and math.isnan(spread[2])


def test_the_zoomed_y_axis_shows_every_error_bar_whole() -> None:
    # MNLI W_k at mini: 47.75 ± 6.01 beside bars near 55; zoomed to the bars alone, its error bar ran
    # below the axis
    import matplotlib.pyplot as plt

    from peftrepro.report.plots import _zoom_to_bars

    figure, axis = plt.subplots()
    means, errors = [47.75, 54.75, 57.25, float("nan")], [6.01, 1.77, float("nan"), float("nan")]
    axis.bar(range(4), means, yerr=errors)
    _zoom_to_bars(axis, errors)
    bottom, top = axis.get_ylim()
    plt.close(figure)
    assert 0 < bottom < 47.75 - 6.01 and top > 57.25


def test_without_out_the_tables_go_beside_the_runs_and_an_empty_one_expects_the_found_seeds(
        runs_dir, write, tmp_path, rank_record):
    for seed in (0, 1):
        write(rank_record(seed, 0.5))
    assert main(["--runs", str(runs_dir), "--no-plots"]) == 0
    empty = (tmp_path / "tables" / "table_e2e.md").read_text()
    assert "- Seeds expected: 0, 1" in empty  # those Table 6 has, as REPORT.md expects
    assert "no record (`make table-e2e PROFILE=smoke` makes it)" in empty  # Table 6's profile


@pytest.mark.parametrize("hardware,precision,label,kind", [
    ({"gpu": "NVIDIA H100"}, "auto", "GPU: NVIDIA H100 (bf16 autocast)", "GPU bf16"),
    ({"gpu": "NVIDIA H100"}, "fp32", "GPU: NVIDIA H100 (fp32)", "GPU fp32"),
    ({"cpu": "AMD EPYC", "cpu_count": 2}, "auto", "CPU: AMD EPYC, 2 cores (fp32)", "CPU fp32"),
    ({"cpu": "AMD EPYC", "cpu_count": 2}, "bf16", "CPU: AMD EPYC, 2 cores (bf16 autocast)", "CPU bf16"),
    ({}, "auto", "unrecorded hardware", "unrecorded hardware"),
])
def test_hardware_label_and_device_kind_agree(hardware, precision, label, kind):
    record = Record(path=Path("r"), run_key="k", experiment="e", status="ok", created_at=pd.Timestamp(0), seed=0,
                    profile="mini", task="e2e", method={}, metrics={},
                    raw={"env": {"hardware": hardware}, "config": {"train": {"precision": precision}}})
    assert (record.hardware, record.device_kind) == (label, kind)


# a pruned run's loss climbs while its schedule removes weights (steps 30-200 of 250, cool-down 0.2) and falls
# once the masks settle: what pruning costs, judged by the score and its baseline, not a failed fit
PRUNED_RAMP = [[10, 1.9], [100, 5.7], [160, 13.5], [200, 3.9], [210, 3.4], [250, 2.6]]
RISING_COOLDOWN = [[10, 1.9], [100, 5.7], [200, 3.9], [210, 1.0], [220, 2.5], [250, 3.0]]
# 80 % remaining: the loss hardly rises while pruning, so the run has trained long before its target
HEALTHY = [[10, 1.9], [100, 0.9], [200, 0.66], [210, 0.66], [250, 0.61]]
FLAT = [[10, 1.9], [100, 1.9], [250, 1.8]]
AT_TARGET = "the first logged at the target sparsity"


@pytest.mark.parametrize("remaining,cooldown,curve,failed,spike", [
    (0.1, 0.2, PRUNED_RAMP, None, None),
    (0.1, None, PRUNED_RAMP, None, None),  # a config without the option: the method's default cool-down
    (0.8, 0.2, HEALTHY, None, None),
    (0.1, 0.2, RISING_COOLDOWN, f"diverged, loss 1.90 at step 10 → 3.00 at step 250; 1.00 at step 210, {AT_TARGET}",
     None),
    # one point at the target, the last: no fall to judge there, so the whole curve decides
    (0.1, 0.2, [[10, 1.9], [200, 2.2], [250, 2.1]], "diverged, loss 1.90 at step 10 → 2.10 at step 250", None),
    # the point at 210 averages steps 11-210, most of them before the target: not one at the target
    (0.1, 0.2, [[10, 1.9], [210, 3.0], [220, 0.8], [230, 2.4], [250, 1.2]], None,
     "loss 0.80 → 2.40 at step 230, 1.20 at step 250"),
    (1.0, 0.2, PRUNED_RAMP, "diverged, loss 1.90 at step 10 → 2.60 at step 250", None),  # nothing pruned
    (1.0, 0.2, FLAT, "barely trained, loss 1.90 at step 10 → 1.80 at step 250", None),
    (None, 0.2, PRUNED_RAMP, "diverged, loss 1.90 at step 10 → 2.60 at step 250", None),  # no pruning at all
])
def test_a_pruned_run_s_loss_is_judged_again_from_its_target_sparsity_on(remaining, cooldown, curve, failed, spike):
    method = {"name": "magnitude_pruning"} | ({} if cooldown is None else {"cooldown": cooldown})
    raw = {"config": {"method": method}, "training": {"loss_curve": curve, "final_loss": curve[-1][1], "steps": 250}}
    if remaining is not None:
        raw["pruning"] = {"target_remaining": remaining}
    record = Record(path=Path("r"), run_key="k", experiment="e", status="ok", created_at=pd.Timestamp(0), seed=0,
                    profile="mini", task="mnli", method={}, metrics={}, raw=raw)
    assert (str(record.failed_training) if record.failed_training else None, record.loss_spike) == (failed, spike)


@pytest.mark.parametrize("count,text", [
    (512, "512"), (1_932, "1.93K"), (9_996, "0.0100M"), (58_048, "0.0580M"), (58_176, "0.0582M"),
    (99_968, "0.100M"),
    (182_080, "0.182M"), (7_800_000, "7.80M"), (135_000_000, "135M"),
])
def test_parameter_counts_print_three_significant_figures(count, text):
    assert format_count(count / 1e6) == text


@pytest.mark.parametrize("table,cells,label", [
    ("table_e2e", [("ft", "bleu")], "FT × BLEU"),
    ("table_e2e", [("ft", "bleu"), ("ft", "nist"), ("ft_top2", "bleu")], "FT × BLEU, NIST; FT^Top2 × BLEU"),
    ("table_rank", [("wikisql|W_q", "r=1"), ("wikisql|W_q", "r=2")], "WikiSQL (±0.5%) / W_q × r=1, r=2"),
])
def test_a_runs_cells_are_labelled_a_row_at_a_time(table, cells, label):
    assert TABLES[table].cells_label(cells) == label
