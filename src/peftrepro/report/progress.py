"""REPORT.md's "At a glance": how far each table is, and what is left to run with how long it would take
on each device the runs used. Reads the tables' results and their records only."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from peftrepro.report import claims
from peftrepro.report.cells import TableResult, extra_seed_runs
from peftrepro.report.records import (
    SHARED_AT,
    Record,
    at_a_time,
    distinct,
    hours,
    is_reused,
    plural,
    run_seconds,
    runs_on,
    sets_own_rates,
    status_counts,
)
from peftrepro.report.render import SELECTION_BY_PROFILE, make_command, selection_points_left
from peftrepro.report.specs import lora_ranks


def shown(results: Mapping[str, TableResult]) -> dict[str, TableResult]:
    """The tables REPORT.md shows: the LoRA paper's always, the other papers' once a run of theirs exists."""
    return {name: result for name, result in results.items()
            if result.spec.in_report_without_runs or result.records}


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


def devices_text(records: Sequence[Record]) -> str:
    return "; ".join(distinct(r.hardware for r in records)) or "—"


def troubled_text(result: TableResult) -> str:
    """The finished runs whose score is not the method's result (did not learn, else failed to train) or
    carries a recovered loss spike, each run counted once: "ok" says only that the run finished."""
    counts: Counter[str] = Counter()
    for r in (r for r in result.records if r.status == "ok"):
        learning = result.learning.get(r.run_key)
        counts["did not learn" if learning and not learning.learned else
               "failed to train" if r.failed_training else "loss spike" if r.loss_spike else "sound"] += 1
    return " / ".join(str(counts[kind]) for kind in ("did not learn", "failed to train", "loss spike"))


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
            "Of the ok: did not learn / failed to train / loss spike": troubled_text(result),
            "Reused from another table": str(len(records) - len(own)),
            "Evaluating another run's weights": str(sum(bool(r.trained_in) and r.status == "ok" for r in own)),
            "Cell × seed still empty": str(empty_cell_seeds(result)),
            "Ran on": devices_text(records),  # a reused run ran where its original did
            "Run time (sum)": hours(sum(run_seconds(r) for r in own)) if own else "—",
            "Paper's claims: held / not held / inconclusive": claims_text(result),
        })
    table = pd.DataFrame(rows)  # "Seeds" is text even when it is a lone "0": aligned left, as "0, 1" is
    return table.to_markdown(index=False, disable_numparse=[list(table.columns).index("Seeds")])


def claims_text(result: TableResult) -> str:
    """How the table's claims fare on our numbers, how many of those verdicts are marginal, and how many
    of the inconclusive ones still wait for a compared cell's runs (Claim.pending)."""
    evaluated = claims.evaluate(result)
    counts = Counter(claim.verdict for claim in evaluated)
    waiting, verb = claims.waiting(evaluated)
    marginal = Counter(claim.verdict for claim in evaluated if claim.marginal)
    return (" / ".join(str(counts[v]) + (f" ({marginal[v]} marginal)" if marginal[v] else "")
                       for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE))
            + (f" ({waiting} of the inconclusive {verb} for runs)" if waiting else ""))


def seeds_text(result: TableResult) -> str:
    """The seeds every cell should have, and any seed beyond them with the number of settings it
    ran for, so that a cell of n=3 beside cells of n=2 is not a surprise."""
    extra = Counter(r.seed for r in extra_seed_runs(result))
    return (", ".join(map(str, result.expected_seeds)) or "—") + "".join(
        f" (+ seed {seed} on {plural(n, 'setting')})" for seed, n in sorted(extra.items()))


def pending_text(every: Mapping[str, TableResult], records: Sequence[Record], study: Sequence[Record]) -> str:
    """What is left to run: the shown tables' empty cells, the hidden tables' runs, the selection points.
    `records`: the tables' runs; `study`: every run of the profile, which tells how many ran at once on a
    device (as "Where, how and on what it ran" says)."""
    results = shown(every)
    hidden = [result for name, result in every.items() if name not in results]
    pairs = sum(empty_cell_seeds(result) for result in results.values())
    if not any(result.expected_seeds for result in every.values()):
        return ("No table has a run yet and no seeds were given (`--seeds`; `make report` passes the profile's), "
                "so what is left cannot be counted.")
    if not pairs and not hidden:
        return ("Every cell has every expected seed; a cell \"n/a\" is a method the model cannot run, or one its "
                "table does not measure by design, and its table's page says why.")
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
        # fewer runs than pairs: a run fills every cell of its configuration (a Table 3 row's five metrics,
        # a QLoRA row's score and memory peak)
        several = "; a run fills every cell its configuration has" if pairs > sum(todo.values()) + copies else ""
        runs = f"{plural(sum(todo.values()), 'run')} ({runs_split(todo)}{several})"
        lines = [f"{empty}, which {runs} would fill." if not copies else
                 f"{empty}. {copies} of them will be filled by copying another table's finished run when the "
                 "table's sweep reaches them (a LoRA setting two tables share, as Table 6 shares three with Table 5 "
                 "and its W_q,W_v rows at r=1 and r=8 with Table 4's LoRA rows, is made once and copied into the "
                 "other where their configs agree: `reused_from` in its record; the copies made so far are the "
                 f"table's \"Reused from another table\" above); the rest, by {runs}."]
    if sum(later.values()):
        titles = " and ".join(result.spec.short_title for result in hidden)
        targets = ", ".join(f"`{make_command(result)}`" for result in hidden)
        which = ("tables, which join this page with their first run" if len(hidden) > 1
                 else "table, which joins this page with its first run")
        lines.append(f"The {titles} {which} ({targets}), need{'s' if len(hidden) == 1 else ''} "
                     f"{plural(sum(later.values()), 'more run')} ({runs_split(later)}).")
    points_left = selection_points_left(every.values())
    devices = distinct(r.hardware for r in own) if sum((todo + later).values()) or points_left else []
    for device in devices:  # none where nothing is left to run (e.g. copies fill every empty pair)
        lines.append(device_estimate(device, [r for r in own if r.hardware == device], todo + later, points_left,
                                     at_a_time(runs_on(study, device))))
    lines.append(selection_text(records, points_run.values(), points_left))
    return f"{lead} What is left:\n\n" + "\n".join(f"- {line}" for line in lines)


def selection_text(records: Sequence[Record], points: Iterable[Record], points_left: Mapping[str, int]) -> str:
    """What comes before a table's runs: the learning-rate selection (unless the profile sets its rates
    itself, as smoke does) and each task's zero-shot baseline."""
    if sets_own_rates(records):
        return ("This profile sets its learning rates itself (`lr_selection: false`), so no selection runs before "
                "a table's runs; each task's zero-shot baseline is run once (`make baselines`).")
    points = list(points)
    if not records and not points:
        return f"{SELECTION_BY_PROFILE} Each task's zero-shot baseline is run once (`make baselines`)."
    finished = sum(r.status == "ok" for r in points)
    left = (f", at least {plural(sum(points_left.values()), 'point')} still to run ({runs_split(points_left)})"
            if points_left else "")
    return (f"Before a table's runs, its learning rates are selected (`make select-lr`: at least three "
            "dev-split runs per task and method, more while the best rate sits on the grid's edge or, on "
            "MultiNLI, no rate beats the majority class, up to `lr_search.max_points`; "
            f"{plural(finished, 'point')} finished so far{left}) and each "
            "task's zero-shot baseline is run once (`make baselines`). A seed-0 table run trains as its "
            "method's chosen selection point did, so where that point kept its weights the run only "
            "evaluates them (`trained_in`), in minutes, unless its method changes the model on a schedule "
            "(pruning), which trains again: the estimate above counts each such run as a whole run.")


def runs_split(todo: Mapping[str, int]) -> str:
    """Runs left per task: "e2e 1, mnli 8"."""
    return ", ".join(f"{task} {count}" for task, count in sorted(todo.items()))


def device_estimate(device: str, runs: Sequence[Record], todo: Mapping[str, int],
                    points_left: Mapping[str, int] | None = None, at_once: float | None = None) -> str:
    """The time the table runs and selection points left would take on one device, from the median per
    task of its own runs, table runs and selection points alike (E2E decodes its outputs, WikiSQL's
    inputs are long: one median over every task would not do). A task with no run there is counted at
    the median over all of that device's runs. Where those runs ran several at once, their times are
    those of runs sharing the device, so the estimate is for as many at once (alone each would be faster);
    `at_once`: how many at once, from every run there (default: from `runs`)."""
    points_left = points_left or {}
    overall = statistics.median(run_seconds(r) for r in runs)
    medians, parts = {}, []
    for task in sorted({*todo, *points_left}):
        times = [run_seconds(r) for r in runs if r.task == task]
        medians[task] = statistics.median(times) if times else overall
        parts.append(f"{hours(medians[task])} on {task} (n = {len(times)})" if times else
                     f"{hours(overall)} on {task} (no {task} run ran there: the median of its "
                     f"{plural(len(runs), 'run')} of other tasks)")
    pending = [(task, count) for counts in (todo, points_left) for task, count in counts.items()]
    total = sum(count * medians[task] for task, count in pending)
    points = f" and at least {plural(sum(points_left.values()), 'selection point')}" if points_left else ""
    what = f"the rest ({plural(sum(todo.values()), 'table run')}{points})"
    at_once = at_a_time(runs) if at_once is None else at_once
    if at_once >= SHARED_AT:
        # runs at once finish no sooner than the longest of them
        longest = max((medians[task] for task, count in pending if count), default=0.0)
        return (f"On {device}, where its runs ran about {round(at_once)} at once, a run of this profile (table runs "
                f"and selection points) took a median of {', '.join(parts)}, so {what} would take about "
                f"{hours(max(total / at_once, longest))} there with as many at once.")
    return (f"On {device}, a run of this profile (table runs and selection points) took a median of "
            f"{', '.join(parts)}, so {what} would "
            f"take about {hours(total)} there.")
