"""results/REPORT.md from records: counts, claims, where it ran, what is left, and nothing else."""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from peftrepro.report import claims, factors
from peftrepro.report import page as report
from peftrepro.report.cells import build_table
from peftrepro.report.claims import Claim
from peftrepro.report.progress import claims_text, device_estimate, runs_split, troubled_text
from peftrepro.report.records import at_a_time, hours, plural, process_seconds, rate_text, rates_text, run_seconds
from peftrepro.report.render import header_lines, layout
from peftrepro.report.specs import TABLES

WQ, QV = {"name": "lora", "ranks": {"W_q": 8}}, {"name": "lora", "ranks": {"W_q": 4, "W_v": 4}}
CPU = {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2}
GPU = {"cpu": "Host CPU", "cpu_count": 16, "gpu": "NVIDIA H100 80GB HBM3"}


@pytest.fixture
def weight_type_runs(write, make_record):
    """MNLI W_q and W_q,W_v, two seeds each: W_q,W_v is clearly better; one run on a GPU. One after
    another: each ends 20 minutes after the one before."""
    for seed in (0, 1):
        for i, (method, accuracy) in enumerate(((WQ, 0.50 + seed * 0.01), (QV, 0.60 + seed * 0.01))):
            record = make_record("table_weight_type", "mnli", method, seed, {"accuracy_m": accuracy},
                                 profile="mini", minutes=20 * (2 * seed + i))
            on_gpu = method is QV and seed == 1
            record["env"]["hardware"] = GPU if on_gpu else CPU
            record["timings"] = {"total_s": 60.0 if on_gpu else 1200.0}
            record["training"] = {"steps": 250}
            write(record)


def page(runs_dir: Path, tmp_path: Path, seeds=(0, 1)) -> str:
    return report.render("mini", list(seeds), runs_dir, tmp_path / "tables", tmp_path / "bench")


def glance(text: str, table: str) -> dict[str, str]:
    """The "At a glance" row of `table` ("Table 5"), by column header."""
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(f"| [{table}]"))
    header = next(lines[i] for i in range(row, -1, -1) if lines[i].startswith("| Table "))
    names, values = ([cell.strip() for cell in line.split("|")[1:-1]] for line in (header, lines[row]))
    return dict(zip(names, values))


def test_counts_devices_time_and_claims_come_from_the_records(weight_type_runs, runs_dir, tmp_path) -> None:
    text = page(runs_dir, tmp_path)
    row = glance(text, "Table 5")
    assert row["Cells with every seed"] == "2 / 14" and row["Seeds"] == "0, 1"
    assert row["Runs ok / failed / n/a / unscored"] == "4 / 0 / 0 / 0"
    assert row["Of the ok: did not learn / failed to train / loss spike"] == "0 / 0 / 0"
    assert row["Reused from another table"] == "0" and row["Evaluating another run's weights"] == "0"
    assert row["Cell × seed still empty"] == "24"
    assert "CPU: Test CPU, 2 cores (fp32)" in row["Ran on"] and "GPU: NVIDIA H100 80GB HBM3 (bf16 autocast)" in row["Ran on"]
    assert row["Run time (sum)"] == "1 h 01 min"  # 3 x 20 min on the CPU + 1 min on the GPU
    # only MultiNLI W_q,W_v vs W_q has both its cells
    assert row["Paper's claims: held / not held / inconclusive"] == "1 / 0 / 5 (5 of the inconclusive wait for runs)"
    assert "MultiNLI: adapting W_q,W_v (r=4) beats W_q alone (r=8) at equal r × #matrices | §7.1, Table 5 | **held**" in text
    assert "On CPU: Test CPU, 2 cores (fp32), a run of this profile (table runs and selection points) took a median of" in text
    assert "20 min on mnli (n = 3)" in text
    assert "- CPU: Test CPU, 2 cores (fp32): 3 runs, 1 h 00 min in all (torch threads per run: 2 (3 runs))." in text


@pytest.mark.parametrize("one_device, wq_cell, qv_cell", [
    (False, "50.5 ± 0.7 (n=2, CPU fp32)", "60.5 ± 0.7 (n=2: 1 CPU fp32, 1 GPU bf16)"),
    (True, "50.5 ± 0.7 (n=2)", "60.5 ± 0.7 (n=2)"),  # one kind of device: nothing to tell apart
])
def test_a_cell_names_where_its_seeds_ran_where_its_table_mixes_devices(weight_type_runs, runs_dir, write, one_device,
                                                                        wq_cell, qv_cell) -> None:
    if one_device:  # the GPU run rerun on the CPU
        (gpu_run,) = [p for p in runs_dir.rglob("record.json") if json.loads(p.read_text())["env"]["hardware"] == GPU]
        record = json.loads(gpu_run.read_text())
        gpu_run.write_text(json.dumps(record | {"env": {**record["env"], "hardware": CPU}}))
    result = build_table(TABLES["table_weight_type"], runs_dir, profile="mini")
    row = layout(result).set_index("Weight Type").loc["MultiNLI (±0.1%)"]
    assert (row["W_q"].split(" · ")[0], row["W_q,W_v"].split(" · ")[0]) == (wq_cell, qv_cell)
    assert ("Its runs ran on CPU fp32 and GPU bf16" in header_lines(result)[-1]) != one_device


SMOOTH = {"loss_curve": [[10, 1.2], [50, 0.4], [250, 0.3]], "final_loss": 0.3, "steps": 250}
SPIKE = {"loss_curve": [[10, 1.2], [50, 0.4], [90, 2.4], [250, 0.5]], "final_loss": 0.5, "steps": 250}
DIVERGED = {"loss_curve": [[10, 1.2], [50, 0.4], [90, 7.9], [250, 5.1]], "final_loss": 5.1, "steps": 250}


@pytest.mark.parametrize("curves, label", [
    ((SMOOTH, SMOOTH), ""),
    ((SMOOTH, SPIKE), "loss spike (1 of 2 seeds): "),
    ((SPIKE, SPIKE), "loss spike: "),
    ((DIVERGED, SPIKE), "diverged (1 of 2 seeds): "),  # a failed fit outranks a spike
])
def test_a_cell_whose_training_loss_spiked_or_diverged_says_so(runs_dir, write, make_record, curves, label) -> None:
    """A spike stays in the cell (the run learned), but 25 ± 18 without a word would read as seed noise;
    a run that diverged (yet scored above its baseline) is named, as its score is not the method's."""
    for seed, (accuracy, training) in enumerate(zip((0.38, 0.12), curves)):
        record = make_record("table_weight_type", "wikisql", WQ, seed, {"lf_accuracy": accuracy}, profile="mini")
        write(record | {"training": training})
    result = build_table(TABLES["table_weight_type"], runs_dir, profile="mini")
    cell = layout(result).set_index("Weight Type").loc["WikiSQL (±0.5%)", "W_q"]
    assert cell.startswith(f"{label}25.0 ± 18.4 (n=2)")


def test_the_time_left_is_estimated_from_each_task_own_runs(weight_type_runs, runs_dir, tmp_path, write,
                                                            make_record) -> None:
    # after the fixture's runs, one after another (CPU runs that overlapped would be estimated as sharing it)
    wikisql = make_record("table_weight_type", "wikisql", WQ, 0, {"lf_accuracy": 0.3}, profile="mini", minutes=100)
    wikisql["env"]["hardware"], wikisql["timings"], wikisql["training"] = CPU, {"total_s": 3600.0}, {"steps": 250}
    write(wikisql)
    point = make_record("lr_search", "e2e", WQ, 0, {"bleu": 0.5}, profile="mini", minutes=140)  # a selection point
    point["env"]["hardware"], point["timings"], point["training"] = CPU, {"total_s": 2400.0}, {"steps": 250}
    write(point)
    text = page(runs_dir, tmp_path)
    # Empty: Table 5 23 runs' cells (5 of 28 ran), Table 6 60, Table 4 32, Table 3 14 rows of 5 metrics each.
    # Copies fill 20 of them: Table 6's three settings shared with Table 5 (2 tasks x 2 seeds; Table 5 made 5
    # of those 12 runs or makes them) and Table 4's W_q,W_v r=1 and r=8 rows, which Table 6 makes (8)
    assert "**185 (cell, seed) pairs are still empty**. 20 of them will be filled by copying another table's finished run" in text
    assert ("the rest, by 109 runs (e2e 14, mnli 46, wikisql 49; a run fills every cell its configuration has).\n"
            in text)
    # the QLoRA and pruning tables, shown from their first run, count too: 8 + 10 runs per seed
    assert ("The QLoRA and Pruning tables, which join this page with their first run (`make table-qlora "
            "PROFILE=mini`, `make table-pruning PROFILE=mini`), need 36 more runs (e2e 8, mnli 28).") in text
    # CPU runs: mnli 3 x 20 min, wikisql 1 x 60 min, and e2e's selection point 40 min
    assert ("a run of this profile (table runs and selection points) took a median of 40 min on e2e (n = 1), "
            "20 min on mnli (n = 3), 1 h 00 min on wikisql (n = 1), so the rest (145 table runs) would take about "
            f"{hours(60 * (40 * (14 + 8) + 20 * (46 + 28) + 60 * 49))} there" in text)
    # a task with no run on the GPU: the median of the GPU's runs of other tasks
    assert "1 min on e2e (no e2e run ran there: the median of its 1 run of other tasks)" in text


def test_a_run_trained_by_another_is_named_and_not_timed_as_a_whole_run(weight_type_runs, runs_dir, tmp_path,
                                                                        write, make_record) -> None:
    evaluated = make_record("table_weight_type", "wikisql", WQ, 0, {"lf_accuracy": 0.3}, profile="mini",
                            minutes=5, key="wikisql-wq-s0-evaluated")
    evaluated["env"]["hardware"], evaluated["timings"] = CPU, {"train_s": 0.0, "total_s": 60.0}
    evaluated["training"] = {"steps": 250}
    evaluated["trained_in"] = {"experiment": "lr_search", "run_key": "wikisql-lora-s0-0123456789abcdef",
                               "git": {"commit": "fedcba9876543210", "dirty": False}}
    write(evaluated)
    failed = make_record("table_weight_type", "wikisql", QV, 0, profile="mini", status="failed", minutes=6)
    write({**failed, "trained_in": {"experiment": "lr_search", "run_key": "wikisql-lora-s0-failed"}})
    text = page(runs_dir, tmp_path)
    assert glance(text, "Table 5")["Evaluating another run's weights"] == "1"  # the failed attempt is not counted
    assert "wikisql 1, mnli 3" not in text
    assert "on wikisql (no wikisql run ran there: the median of its 3 runs of other tasks)" in text
    table = "\n".join(header_lines(build_table(TABLES["table_weight_type"], runs_dir, profile="mini")))
    assert ("- Trained by another run: 1 run evaluates the kept weights of a run that trained with the same "
            "config, seed and data and was evaluated on another split (`trained_in` in the record): "
            "lora seed 0 ← lr_search/wikisql-lora-s0-0123456789abcdef\n") in table + "\n"
    assert "- Commit(s): 0123456789, fedcba9876" in table  # the commit that evaluated, and the one that trained


@pytest.mark.parametrize(("ends_min", "expected"), [
    ([20, 40, 60], 1.0),  # one after another
    ([20, 20, 20], 3.0),  # all at once
    ([20, 30], 2 * 20 / 30),  # half overlapping: 40 min of runs in 30 min
    ([20, 20, 80], 3 * 20 / 40),  # two at once, then a gap, then one: the gap is no wall time of theirs
    ([20, 20, None], 2.0),  # a run without a recorded time is left out, not counted as a zero-length one
    ([], 0.0),
], ids=["sequential", "together", "overlapping", "gap", "untimed", "none"])
def test_runs_at_a_time_come_from_their_start_and_end_times(runs_dir, write, make_record, ends_min,
                                                             expected) -> None:
    for i, end in enumerate(ends_min):
        record = make_record("table_weight_type", "mnli", WQ, i, {"accuracy_m": 0.5}, minutes=end or 50, key=f"k{i}")
        record["timings"] = {"total_s": 1200.0} if end else {}
        write(record)
    records = build_table(TABLES["table_weight_type"], runs_dir).records
    assert at_a_time(records) == pytest.approx(expected)


@pytest.mark.parametrize(("resumed", "run_s"), [
    ([], 600.0),
    ([{"from_step": 50, "train_s_before": 300.0}], 900.0),
    # each resumption counts all training before it: the last holds the sum
    ([{"from_step": 50, "train_s_before": 300.0}, {"from_step": 120, "train_s_before": 1000.0}], 1600.0),
], ids=["not resumed", "resumed once", "resumed twice"])
def test_a_resumed_runs_time_counts_the_training_before_it_resumed(runs_dir, write, make_record, resumed,
                                                                  run_s) -> None:
    record = make_record("table_weight_type", "mnli", WQ, 0, {"accuracy_m": 0.5}, minutes=50)
    record["timings"], record["training"] = {"total_s": 600.0}, {"steps": 250, "resumed": resumed}
    write(record)
    [run] = build_table(TABLES["table_weight_type"], runs_dir).records
    # the last process alone ended at the record's time: its span is what ran at once with others
    assert (run_seconds(run), process_seconds(run)) == (run_s, 600.0)


def test_runs_at_once_take_no_less_than_one_run(runs_dir, write, make_record) -> None:
    """Four runs took 3 min each, four at once: one more would take 3 min, not a quarter of it."""
    for seed in range(4):
        record = make_record("table_weight_type", "mnli", WQ, seed, {"accuracy_m": 0.5}, minutes=10, key=f"k{seed}")
        record["timings"] = {"total_s": 180.0}
        write(record)
    runs = build_table(TABLES["table_weight_type"], runs_dir).records
    assert device_estimate("GPU", runs, {"mnli": 1}).endswith(f"would take about {hours(180)} there with as many at once.")
    assert device_estimate("GPU", runs, {"mnli": 8}).endswith(f"would take about {hours(360)} there with as many at once.")


def test_runs_that_shared_a_device_say_so_with_their_wall_time(runs_dir, tmp_path, write, make_record) -> None:
    for seed in (0, 1):
        for method in (WQ, QV):
            record = make_record("table_weight_type", "mnli", method, seed, {"accuracy_m": 0.5}, profile="mini")
            record["env"]["hardware"], record["timings"] = GPU, {"total_s": 180.0}
            record["training"] = {"steps": 250}
            write(record)
    text = page(runs_dir, tmp_path)
    assert ("- GPU: NVIDIA H100 80GB HBM3 (bf16 autocast): 4 runs, 12 min in all, about 4 at once, so 3 min of "
            "wall time (torch threads per run: unrecorded (4 runs)).") in text
    # the medians (3 min) were measured 4 at once, so the estimate is for 4 at once: 146 runs x 3 min / 4
    # (130 empty settings of the LoRA paper's tables less 20 copies, and the other papers' 36)
    assert ("On GPU: NVIDIA H100 80GB HBM3 (bf16 autocast), where its runs ran about 4 at once, a run of this "
            "profile (table runs and selection points) took a median of 3 min on e2e (no e2e run ran there: the median "
            "of its 4 runs of other tasks), 3 min on mnli (n = 4), 3 min on wikisql (no wikisql run ran there: the "
            "median of its 4 runs of other tasks), so the rest (146 table runs) would take about "
            f"{hours(146 * 180 / 4)} there with as many at once.") in text


def test_the_time_left_and_where_it_ran_count_the_same_runs_at_once(weight_type_runs, runs_dir, tmp_path, write,
                                                                   make_record) -> None:
    """How many ran at once on a device counts every run made there, zero-shot baselines too, in both
    sections: the GPU's one table run shared it with three baselines."""
    for i in range(3):
        baseline = make_record("baselines", "mnli", {"name": "none"}, 0, {"accuracy_m": 0.35}, profile="mini",
                               minutes=60, key=f"mnli-baseline-{i}")
        baseline["env"]["hardware"], baseline["timings"] = GPU, {"total_s": 60.0}
        write(baseline)
    text = page(runs_dir, tmp_path)
    where = re.findall(r"- GPU: [^\n]*?, about (\d+) at once", text)
    left = re.findall(r"On GPU: [^\n]*?, where its runs ran about (\d+) at once", text)
    assert where == left == ["4"]


@pytest.mark.parametrize(("todo", "text"), [
    ({"mnli": 2, "e2e": 1}, "e2e 1, mnli 2"),
    ({"wikisql": 9, "mnli": 2}, "mnli 2, wikisql 9"),
])
def test_the_runs_left_name_their_tasks(todo, text) -> None:
    assert runs_split(todo) == text


@pytest.mark.parametrize(("n", "text"), [(0, "0 runs"), (1, "1 run"), (2, "2 runs")])
def test_counts_agree_with_their_noun(n, text) -> None:
    assert plural(n, "run") == text  # the page once said "1 (cell, seed) pairs ..., which 1 runs"


def test_every_table_with_a_figure_links_it(weight_type_runs, runs_dir, tmp_path) -> None:
    text = page(runs_dir, tmp_path)
    for name in ("table_weight_type", "table_rank"):
        assert f"plot: [`tables/{name}.png`](tables/{name}.png)" in text
    assert "tables/table_e2e.png" not in text and "tables/table_methods.png" not in text


def test_no_clock_and_no_machine_in_the_page(weight_type_runs, runs_dir, tmp_path) -> None:
    text = page(runs_dir, tmp_path)
    assert text == page(runs_dir, tmp_path)
    assert "Latest record: 2025-01-01T01:00:00+00:00" in text  # the records' own time, the only one
    assert datetime.now(timezone.utc).date().isoformat() not in text and socket.gethostname() not in text


def test_a_seed_beyond_the_expected_ones_is_named_among_the_commands(weight_type_runs, runs_dir, tmp_path, write,
                                                                   make_record) -> None:
    assert "seeds beyond SEEDS" not in page(runs_dir, tmp_path)
    write(make_record("table_weight_type", "mnli", QV, 2, {"accuracy_m": 0.6}, profile="mini", key="third"))
    text = page(runs_dir, tmp_path)
    assert "make report PROFILE=mini\n# seeds beyond SEEDS, one setting at a time:\n" in text
    assert ("# Table 5, MultiNLI (±0.1%) × W_q,W_v, seed 2\n"
            "python -m peftrepro.runs -m experiment=table_weight_type profile=mini seed=2 task=mnli "
            "'method.ranks={W_q:4,W_v:4}'\n") in text
    assert "seed=0" not in text and "seed=1" not in text  # the expected seeds come from the make commands
    assert glance(text, "Table 5")["Seeds"] == "0, 1 (+ seed 2 on 1 setting)"
    assert "seeds beyond SEEDS" not in page(runs_dir, tmp_path, seeds=(0, 1, 2))


def test_reused_runs_count_once(weight_type_runs, runs_dir, tmp_path, write, make_record) -> None:
    copy = make_record("table_rank", "mnli", {"name": "lora", "weights": ["W_q"], "r": 8}, 0, {"accuracy_m": 0.5},
                       profile="mini", key="copied")
    copy["reused_from"] = {"experiment": "table_weight_type", "run_key": "x"}
    copy["env"]["hardware"], copy["timings"] = CPU, {"total_s": 1200.0}
    write(copy)
    row = glance(page(runs_dir, tmp_path), "Table 6")
    assert row["Reused from another table"] == "1" and row["Run time (sum)"] == "—"  # no run time of its own
    assert row["Ran on"] == "CPU: Test CPU, 2 cores (fp32)"  # where the original ran


def test_runs_scored_later_and_unscored_runs_are_counted(runs_dir, tmp_path, write, make_record) -> None:
    lora = {"name": "lora", "ranks": {"W_q": 4, "W_v": 4}}
    scored = make_record("table_e2e", "e2e", lora, 0, {"bleu": 0.6}, profile="mini", key="scored-later")
    scored["scoring"] = {"scored_at": "2025-01-02T00:00:00+00:00", "env": {"hardware": CPU}}
    write(scored)
    write(make_record("table_e2e", "e2e", lora, 1, profile="mini", key="waiting") | {"status": "unscored"})
    text = page(runs_dir, tmp_path)
    assert glance(text, "Table 3")["Runs ok / failed / n/a / unscored"] == "1 / 0 / 0 / 1"
    assert "from its saved predictions (`scoring=auto`, no Java where it ran): 1 run(s)." in text


def test_the_page_says_how_large_a_difference_the_runs_can_resolve(runs_dir, tmp_path, write, make_record) -> None:
    for seed, accuracy in ((0, 0.50), (1, 0.58)):
        record = make_record("table_weight_type", "mnli", WQ, seed, {"accuracy_m": accuracy}, profile="mini")
        record["data"]["eval_examples"] = 400
        write(record | {"eval_notes": {"examples": {"matched": 200, "mismatched": 200}}})
    text = page(runs_dir, tmp_path)
    assert "mnli: 32 training examples, 400 evaluated, 200 matched and 200 mismatched (validation split)." in text
    assert ("MultiNLI: one accuracy is computed on 200 examples, so near 54% it has a binomial standard error of "
            "3.5 points against the whole evaluation split, while the paper's Table 5 cells span 0.9 points "
            "(90.8–91.7); two seeds of one setting of Tables 4–6 differ by up to 8.0 points here.") in text
    assert "Scale of the differences.** No evaluated run yet." in page(tmp_path / "none", tmp_path)


def test_the_page_says_where_wikisql_questions_come_from(runs_dir, tmp_path, write, make_record) -> None:
    record = make_record("table_weight_type", "wikisql", QV, 0, {"lf_accuracy": 0.4}, profile="mini")
    record["config"]["task"] |= {"split_policy": "test_by_table", "eval_fraction": 0.2}
    write(record)
    text = page(runs_dir, tmp_path)
    assert "wikisql: 32 training examples, 4 evaluated (validation split)." in text
    assert "from the official test split, cut by table (`task.split_policy=test_by_table`): a seeded 20 %" in text
    record["config"]["task"]["split_policy"] = "official"  # the hub's own train/dev split: nothing to explain
    write(record)
    assert "cut by table" not in page(runs_dir, tmp_path)


def test_a_run_that_loaded_no_data_adds_nothing_to_the_data_line(runs_dir, tmp_path, write, make_record) -> None:
    write(make_record("table_methods", "mnli", {"name": "adapter_h", "r": 1}, 0, {"accuracy_m": 0.5}, profile="mini"))
    bitfit = make_record("table_methods", "mnli", {"name": "bitfit"}, 0, status="not_applicable", profile="mini")
    write(bitfit | {"data": None})  # not applicable: stopped before loading any data
    text = page(runs_dir, tmp_path)
    assert "Per run, mnli: 32 training examples, 4 evaluated (validation split)." in text
    assert "None training examples" not in text


def test_the_page_names_the_starting_weights_of_the_runs(runs_dir, tmp_path, write, make_record) -> None:
    for seed in (0, 1):
        record = make_record("table_weight_type", "mnli", WQ, seed, {"accuracy_m": 0.5}, profile="mini")
        write(record | {"model": record["model"] | {"weights_sha256": "ab" * 32}})
    older = make_record("table_weight_type", "mnli", QV, 0, {"accuracy_m": 0.5}, profile="mini")
    write(older)  # written before records carried the digest
    copy = make_record("table_rank", "mnli", QV, 0, {"accuracy_m": 0.5}, profile="mini", key="copied")
    write(copy | {"reused_from": {"experiment": "table_weight_type", "run_key": older["run_key"]}})
    assert ("Starting weights (sha256 of the state dict as loaded): tiny-llama `abababababab` (2 runs), "
            "tiny-llama unrecorded (1 run).") in page(runs_dir, tmp_path)


def test_an_empty_results_folder_still_renders(runs_dir, tmp_path) -> None:
    text = page(runs_dir, tmp_path)
    assert "No records yet." in text and "No benchmark file yet" in text and "$" not in text.replace("$(", "")
    assert ("This results folder has no archived tables of the untuned protocol (`untuned-144630b/tables/` under "
            "`archive/` beside its runs), so no verdicts to compare") in text


def test_the_thresholds_the_page_states_are_filled_in_from_the_code_s_constants(runs_dir, tmp_path,
                                                                               monkeypatch) -> None:
    from importlib import resources

    template = resources.files("peftrepro").joinpath("data/report_template.md").read_text(encoding="utf-8")
    assert not any(typed in template for typed in ("1.96", "95 %", "90 %"))
    defaults = page(runs_dir, tmp_path)
    assert "by 1.96 standard errors" in defaults and "on a 95 % interval" in defaults
    assert "ended above 90 % of it / rose above 2× its lowest" in defaults
    for module, name, value in ((report, "LEARNED_Z", 2.58), (report, "CONFIDENCE_TEXT", "99 %"),
                                (report, "BARELY_TRAINED_RATIO", 0.8), (report, "LOSS_SPIKE_RATIO", 3.0)):
        monkeypatch.setattr(module, name, value)
    text = page(runs_dir, tmp_path)
    assert "by 2.58 standard errors" in text and "on a 99 % interval" in text and "its 99 %\n" in text
    assert "ended above 80 % of it / rose above 3× its lowest" in text


def test_a_cell_whose_seeds_ran_on_different_hardware_is_flagged(weight_type_runs, runs_dir) -> None:
    from peftrepro.report.cells import build_table
    from peftrepro.report.render import header_lines, incomplete_lines
    from peftrepro.report.specs import TABLES

    result = build_table(TABLES["table_weight_type"], runs_dir, "mini", [0, 1])
    assert incomplete_lines(result).count(
        "- MIXED HARDWARE MultiNLI (±0.1%) × W_q,W_v: its seeds ran on CPU: Test CPU, 2 cores (fp32) and "
        "GPU: NVIDIA H100 80GB HBM3 (bf16 autocast); the spread includes the difference") == 1
    assert not [line for line in incomplete_lines(result) if "MIXED" in line and "× W_q:" in line]
    assert "- Ran on: CPU: Test CPU, 2 cores (fp32) (3 runs); GPU: NVIDIA H100 80GB HBM3 (bf16 autocast) (1 run)" \
        in header_lines(result)


def test_the_constraints_pin_the_versions_the_runs_agree_on(runs_dir, write, make_record) -> None:
    packages = ({"torch": "2.13.0+cpu", "numpy": "2.4.6", "peft": "0.21.2", "peft-repro": "0.1.0"},
                {"torch": "2.13.0+cu128", "numpy": "2.5.0", "peft": "0.21.2", "peft-repro": "0.2.0"})
    for seed, versions in enumerate(packages):
        record = make_record("table_weight_type", "mnli", WQ, seed, {"accuracy_m": 0.5}, profile="mini")
        record["env"].update(packages=versions, python="3.11.7")
        write(record)
    copy = make_record("table_rank", "mnli", WQ, 0, {"accuracy_m": 0.5}, profile="mini", key="copied")
    # a copy ran where its original did
    copy.update(reused_from={"experiment": "table_methods", "run_key": "elsewhere"}, env={"packages": {"peft": "0.1.0"}})
    write(copy)
    text = report.constraints("mini", runs_dir, Path("results/constraints.txt"))
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    assert pins == ["peft==0.21.2", "torch==2.13.0"]  # the project itself is installed from the checkout
    assert "# numpy: not pinned, the runs disagree: 2.4.6 (1 run), 2.5.0 (1 run)." in text
    assert "# torch: the runs used the build(s) 2.13.0+cpu, 2.13.0+cu128; pinned without the label." in text
    assert "pip install -c results/constraints.txt" in text and "# Python: 3.11.7 (2 runs)." in text


def test_the_constraints_count_the_versions_evaluated_weights_were_trained_with(runs_dir, write, make_record):
    record = make_record("table_weight_type", "mnli", WQ, 0, {"accuracy_m": 0.5}, profile="mini")
    record["env"].update(packages={"torch": "2.13.0", "peft": "0.21.2"}, python="3.11.7")
    record["trained_in"] = {"experiment": "lr_search", "run_key": "k", "packages": {"torch": "2.12.1", "peft": "0.21.2"}}
    write(record)
    text = report.constraints("mini", runs_dir, Path("results/constraints.txt"))
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["peft==0.21.2"]
    assert "# torch: not pinned, the runs disagree: 2.13.0 (1 run), 2.12.1 (1 run)." in text


def test_without_seeds_the_report_uses_the_seeds_its_tables_found(weight_type_runs, runs_dir, tmp_path) -> None:
    out = tmp_path / "REPORT.md"
    assert report.main(["--profile", "mini", "--runs", str(runs_dir), "--tables", str(tmp_path / "tables"),
                        "--bench", str(tmp_path / "bench"), "--out", str(out),
                        "--constraints", str(tmp_path / "constraints.txt")]) == 0
    text = out.read_text(encoding="utf-8")
    assert "(W_q,W_v at r=8 and r=64, seeds 0, 1, each task)" in text
    # a table with no run yet expects those seeds too: its cells are empty, not "every seed" of none
    row = glance(text, "Table 6")
    assert (row["Cells with every seed"], row["Seeds"]) == ("0 / 30", "0, 1")
    assert "Every cell of the tables above has every expected seed" not in text


def test_without_runs_or_seeds_what_is_left_is_not_counted(runs_dir, tmp_path) -> None:
    text = report.render("mini", None, runs_dir, tmp_path / "tables", tmp_path / "bench")
    assert ("No table has a run yet and no seeds were given (`--seeds`; `make report` passes the profile's), so "
            "what is left cannot be counted.") in text
    assert "every expected seed" not in text and "need 0 more runs" not in text


RUN_THEM = "; `make table-rank` runs them, or copies them where Table 4 or 5 ran the same setting"


def test_the_section7_pages_are_linked_with_their_verdicts_once_generated(tmp_path, runs_dir) -> None:
    lines = report.section7_text(tmp_path, runs_dir, "mini", [0, 1]).splitlines()
    assert lines == [
        "- Figures 3 and 4, subspace similarity of A (r=8 vs r=64, seed vs seed): not yet generated: "
        "`make figure-subspace`; of the 8 runs it reads (W_q,W_v at r=8 and r=64, seeds 0, 1, each task), "
        f"8 not run yet (mnli, wikisql{RUN_THEM}).",
        "- Table 7, how ΔW_q compares to W_q (r=4 and r=64): not yet generated: `make table-amplification`; "
        f"of the 8 runs it reads (W_q,W_v at r=4 and r=64, seeds 0, 1, each task), 8 not run yet (mnli, wikisql{RUN_THEM})."]
    (tmp_path / "table_amplification.md").write_text("# Table 7\n")
    verdicts = ["held", "not held", "inconclusive (held in 1 of 2)", "inconclusive (no run that learned)", "held"]
    (tmp_path / "table_amplification_statements.csv").write_text("verdict\n" + "\n".join(f'"{v}"' for v in verdicts))
    assert report.section7_text(tmp_path, runs_dir, "mini", [0, 1]).splitlines()[1] == (
        "- Table 7, how ΔW_q compares to W_q (r=4 and r=64): [`tables/table_amplification.md`](tables/table_amplification.md); "
        "the paper's statements: 2 held, 1 not held, 2 inconclusive.")


def test_the_section7_line_tells_runs_not_made_from_runs_made_without_their_factors(tmp_path, runs_dir, write,
                                                                                    make_record) -> None:
    """A run made without its factors (e.g. before runs kept them) is not a run still to make: the line says which."""
    for task, seed, rank in [("mnli", s, r) for s in (0, 1) for r in (8, 64)] + [("wikisql", 0, 8)]:
        path = write(make_record("table_rank", task, {"name": "lora", "ranks": {"W_q": rank, "W_v": rank}}, seed,
                                 {"accuracy_m": 0.6}, profile="mini"))
        if task == "wikisql":
            (path.parent / "lora_factors.safetensors").write_bytes(b"")  # only its presence is surveyed
    assert report.section7_text(tmp_path, runs_dir, "mini", [0, 1]).splitlines()[0].endswith(
        "`make figure-subspace`; of the 8 runs it reads (W_q,W_v at r=8 and r=64, seeds 0, 1, each task), "
        f"3 not run yet (wikisql{RUN_THEM}) and 4 kept no factors (mnli; `make lora-factors` where their adapters "
        "are, else only a "
        "rerun makes them).")


@pytest.mark.parametrize("rerun", [False, True])
def test_the_section7_analyses_do_not_read_a_copy_whose_original_was_rerun(tmp_path, runs_dir, write, make_record,
                                                                            rerun) -> None:
    """A Table 6 copy reads its factors from its original's folder; once the original is rerun (force=true)
    those factors are the new run's while the copy's record is the old one's, so the pair is not read."""
    for seed in (0, 1):
        for rank in (8, 64):
            lora = {"name": "lora", "ranks": {"W_q": rank, "W_v": rank}}
            original = make_record("table_methods" if rank == 8 else "table_rank", "mnli", lora, seed,
                                   {"accuracy_m": 0.6}, profile="mini", key=f"r{rank}-s{seed}")
            (write(original).parent / "lora_factors.safetensors").write_bytes(b"")
            if rank == 8:
                write({**original, "experiment": "table_rank",
                       "reused_from": {"experiment": "table_methods", "run_key": original["run_key"]}})
                if rerun and seed == 1:
                    write({**original, "created_at": "2030-01-01T00:00:00+00:00"})
    found, gaps = factors.survey(runs_dir, "mini", ["mnli"], [8, 64], [0, 1])
    assert sorted(found) == ([("mnli", 8, 0), ("mnli", 64, 0), ("mnli", 64, 1)] if rerun else
                             [("mnli", 8, 0), ("mnli", 8, 1), ("mnli", 64, 0), ("mnli", 64, 1)])
    assert [(gap.why, gap.seed, gap.detail) for gap in gaps] == ([(
        factors.STALE_COPY, 1, "run r8-s1 is a copy of table_methods/r8-s1, which was rerun since (status ok); a "
                               "Table 6 sweep copies it again once that rerun is ok")] if rerun else [])
    if rerun:
        assert report.section7_text(tmp_path, runs_dir, "mini", [0, 1]).splitlines()[0].endswith(
            f"4 not run yet (wikisql{RUN_THEM}) and 1 copied before a rerun (mnli; `make table-rank` copies them "
            "again once "
            "those reruns are ok).")


def test_the_section7_analyses_name_a_copy_whose_original_is_gone(tmp_path, runs_dir, write, make_record) -> None:
    """Not "kept no factors" (whose remedy exports them from the adapters): the run they came from is gone."""
    lora = {"name": "lora", "ranks": {"W_q": 8, "W_v": 8}}
    copy = make_record("table_rank", "mnli", lora, 0, {"accuracy_m": 0.6}, profile="mini", key="r8-s0")
    write({**copy, "reused_from": {"experiment": "table_methods", "run_key": "r8-s0"}})
    _, gaps = factors.survey(runs_dir, "mini", ["mnli"], [8], [0])
    assert [(gap.why, gap.detail) for gap in gaps] == [(factors.ORIGINAL_GONE, (
        f"run r8-s0 is a copy of table_methods/r8-s0, which is no longer in {runs_dir / 'table_methods' / 'r8-s0'}"))]


def test_where_counts_the_study_s_training_runs_but_not_the_latency_study(weight_type_runs, runs_dir, tmp_path, write,
                                                                          make_record) -> None:
    search = make_record("lr_search", "mnli", QV, 0, {"accuracy_dev": 0.6}, profile="mini")
    search["env"]["hardware"], search["timings"] = CPU, {"total_s": 1200.0}
    write(search)
    latency_records = Path(__file__).resolve().parents[2] / "results" / "runs" / "table_latency"
    latency = json.loads(next(latency_records.glob("*/record.json")).read_text(encoding="utf-8"))
    write({**latency, "profile": "mini"}, name="latency")  # its config names the model by a string
    bitfit = make_record("table_methods", "mnli", {"name": "bitfit"}, 0, status="not_applicable", profile="mini")
    bitfit["env"]["hardware"], bitfit["timings"] = CPU, {"total_s": 6.0}
    write(bitfit)
    text = page(runs_dir, tmp_path)
    assert ("- CPU: Test CPU, 2 cores (fp32): 5 runs (1 of them not applicable: they stopped before training), "
            "1 h 20 min in all") in text


def test_the_glance_row_counts_marginal_verdicts_and_claims_waiting_for_runs(monkeypatch) -> None:
    verdicts = [("held", True), ("held", False), ("not held", True), ("not held", True), ("inconclusive", False)]
    found = [Claim("claim", "§0", verdict, "", marginal=marginal) for verdict, marginal in verdicts]
    monkeypatch.setattr(claims, "evaluate", lambda result: [*found, Claim("claim", "§0", "inconclusive", "",
                                                                          waiting="one seed")])
    assert claims_text(None) == "2 (1 marginal) / 2 (2 marginal) / 2 (1 of the inconclusive waits for runs)"


def test_the_glance_row_names_finished_runs_whose_score_is_not_the_method_s() -> None:
    """"ok" only says a run finished: those that did not learn (first), failed to train (next) or came
    through a loss spike are counted once each, beside it."""
    def run(key, status="ok", failed=None, spike=None):
        return SimpleNamespace(run_key=key, status=status, failed_training=failed, loss_spike=spike)

    records = [run("sound"), run("no-learn", failed="diverged"), run("diverged", failed="diverged"),
               run("spiked", spike="0.3 → 0.9"), run("spiked-no-learn", spike="0.3 → 0.9"),
               run("crashed", status="failed", failed="diverged")]
    learning = {key: SimpleNamespace(learned=key not in ("no-learn", "spiked-no-learn")) for key in
                ("sound", "no-learn", "diverged", "spiked", "spiked-no-learn")}
    assert troubled_text(SimpleNamespace(records=records, learning=learning)) == "2 / 1 / 1"


@pytest.mark.parametrize(("lr", "text"), [(3e-5, "3e-5"), (1e-4, "1e-4"), (0.003, "3e-3"), (2.5e-4, "2.5e-4"),
                                          (0.1, "1e-1"), (0.3, "3e-1"), (1.0, "1"), ("0.01", "1e-2")])
def test_learning_rates_print_in_one_notation(lr, text) -> None:
    assert rate_text(lr) == text


def test_distinct_rates_sort_by_value_not_as_text() -> None:
    assert rates_text([0.01, "0.0003", None, 3e-5, 0.01, 0.3]) == ["3e-5", "3e-4", "1e-2", "3e-1"]


@pytest.mark.parametrize("results", ["results", "results/smoke"])
def test_the_page_names_the_constraints_file_of_its_own_results_folder(runs_dir, tmp_path, results) -> None:
    text = report.render("smoke", [0], runs_dir, Path(results) / "tables", Path(results) / "bench", root=tmp_path)
    assert f"`pip install -c {results}/constraints.txt -e '.[test,launchers,wandb,qlora]'`" in text


@pytest.mark.parametrize("selection, expected", [
    (True, "Before a table's runs, its learning rates are selected (`make select-lr`"),
    (False, "This profile sets its learning rates itself (`lr_selection: false`), so no selection runs before a "
            "table's runs; each task's zero-shot baseline is run once (`make baselines`)."),
])
def test_what_is_left_says_whether_rates_are_selected_first(runs_dir, tmp_path, write, make_record, selection,
                                                           expected) -> None:
    record = make_record("table_weight_type", "mnli", WQ, 0, {"accuracy_m": 0.5}, profile="mini")
    record["config"]["lr_selection"] = selection
    write(record)
    text = page(runs_dir, tmp_path)
    assert expected in text
    assert ("learning rates are selected" in text) is selection


def test_without_seeds_an_empty_table_expects_the_seeds_every_table_with_runs_has(weight_type_runs, runs_dir,
                                                                                  tmp_path, write, make_record):
    for seed in (0, 1, 2):  # Table 4 with a third seed on one setting: Table 5 has 0 and 1
        write(make_record("table_methods", "mnli", {"name": "ft"}, seed, {"accuracy_m": 0.6}, profile="mini"))
    text = report.render("mini", None, runs_dir, tmp_path / "tables", tmp_path / "bench")
    row = glance(text, "Table 6")
    assert (row["Cells with every seed"], row["Seeds"]) == ("0 / 30", "0, 1")


def test_the_constraints_file_defaults_to_beside_the_page(weight_type_runs, runs_dir, tmp_path) -> None:
    out = tmp_path / "study" / "REPORT.md"
    assert report.main(["--profile", "mini", "--seeds", "0,1", "--runs", str(runs_dir), "--tables",
                        str(tmp_path / "tables"), "--bench", str(tmp_path / "bench"), "--out", str(out)]) == 0
    assert (tmp_path / "study" / "constraints.txt").is_file()
    assert f"`pip install -c {(tmp_path / 'study' / 'constraints.txt').as_posix()} -e" in out.read_text(encoding="utf-8")


def test_without_out_the_page_goes_beside_the_runs_it_reads(weight_type_runs, runs_dir, tmp_path) -> None:
    assert report.main(["--profile", "mini", "--seeds", "0,1", "--runs", str(runs_dir)]) == 0
    assert (tmp_path / "REPORT.md").is_file() and (tmp_path / "constraints.txt").is_file()


def test_a_lone_seed_aligns_as_text_like_a_list_of_seeds(runs_dir, tmp_path, write, make_record) -> None:
    write(make_record("table_weight_type", "mnli", WQ, 0, {"accuracy_m": 0.5}, profile="mini"))
    lines = page(runs_dir, tmp_path, seeds=(0,)).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Table "))
    seeds = [row.split("|")[3] for row in lines[header + 1:header + 3]]
    assert seeds[1].strip() == "0" and seeds[0].startswith(":") and not seeds[0].endswith(":")  # not "----:"


def test_the_speed_section_names_the_latency_record_its_table_shows_and_the_others(tmp_path) -> None:
    runs = tmp_path / "runs"
    for key, cpu in (("cpu-amd-smoke", "AMD EPYC"), ("cpu-intel-smoke", "Intel Xeon")):
        (runs / "table_latency" / key).mkdir(parents=True)
        record = {"run_key": key, "env": {"hardware": {"cpu": cpu}}, "config": {"profile": "smoke"}}
        (runs / "table_latency" / key / "record.json").write_text(json.dumps(record))
    (tmp_path / "table_latency.md").write_text("Generated by `x` from `results/runs/table_latency/cpu-intel-smoke/record.json`.")
    assert report.latency_text(tmp_path, runs).endswith(
        "shows `cpu-intel-smoke` on Intel Xeon (profile smoke); also measured: `cpu-amd-smoke` on AMD EPYC "
        "(profile smoke) (`make table-latency` on that machine shows it).")


@pytest.mark.parametrize("trainable, says", [
    ({"W_q": 276_480, "W_q,W_v": 230_400}, " [trainable parameters differ: W_q,W_v 0.230M vs W_q 0.276M]"),
    ({"W_q": 230_400, "W_q,W_v": 230_400}, ""),  # GPT-3's square matrices: equal r × #matrices is an equal count
])
def test_a_weight_type_claim_says_where_its_equal_budget_trains_different_counts(write, make_record, runs_dir,
                                                                                  trainable, says) -> None:
    for seed in (0, 1):
        for column, method in (("W_q", WQ), ("W_q,W_v", QV)):
            record = make_record("table_weight_type", "mnli", method, seed, {"accuracy_m": 0.5 + 0.1 * (method is QV)})
            write(record | {"params": {"trainable": trainable[column], "total": 10**8}})
    found = claims.evaluate(build_table(TABLES["table_weight_type"], runs_dir))
    claim = next(c for c in found if c.text.startswith("MultiNLI: adapting W_q,W_v (r=4) beats W_q alone"))
    assert claim.evidence.endswith(")" + says)


def test_the_commands_regenerate_a_section7_page_only_once_it_exists(tmp_path, runs_dir) -> None:
    def commands() -> list[str]:
        text = report.render("mini", [0, 1], runs_dir, tmp_path / "tables", tmp_path / "bench")
        return [line for line in text.split("```")[1].splitlines() if line]

    (tmp_path / "tables").mkdir()
    assert not any("figure-subspace" in line or "amplification" in line for line in commands())
    (tmp_path / "tables" / "figure_subspace.md").write_text("# Figures 3 and 4\n")
    # a page without the verdicts the REPORT counts is not generated yet (an interrupted make figure-subspace)
    assert not any("figure-subspace" in line for line in commands())
    (tmp_path / "tables" / "figure_subspace_statements.csv").write_text("statement,verdict\n")
    assert commands()[-2:] == ["make figure-subspace PROFILE=mini SEEDS=0,1", "make report PROFILE=mini"]


def test_a_benchmark_line_names_its_threads_and_its_largest_difference_as_measured(tmp_path) -> None:
    hardware = {"cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 1}
    scoring = {"setup": {"layers": 30, "weights": "gguf", "examples": 32}, "env": {"hardware": hardware},
               "speedup": 2.5, "max_abs_logprob_difference": 1.3e-5}
    training = {"setup": {"model": "smollm2", "model_config": {"num_hidden_layers": 4}, "batch": 8, "seq": 64,
                          "dtype": "fp32"}, "env": {"hardware": {**hardware, "torch_threads": 2}},
                "training": [{"method": "lora", "speedup": 1.52}]}
    for name, bench in (("cpu-mnli-scoring", scoring), ("cpu-smollm2", training)):
        (tmp_path / f"{name}.json").write_text(json.dumps(bench), encoding="utf-8")
    lines = report.bench_text(tmp_path).splitlines()
    assert "AMD EPYC (1 torch thread), SmolLM2 shape" in lines[0] and "(largest difference 1.3e-05)" in lines[0]
    assert "AMD EPYC (2 torch threads), smollm2 (4 layers)" in lines[1] and "lora 1.52×" in lines[1]
