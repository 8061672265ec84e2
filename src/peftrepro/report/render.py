"""A table's page: the paper's layout with ours beside the paper's values, the wide CSV, what is
missing or failed, the learning-rate selection, the trivial baselines, the claims and the choices;
`write_table` writes `<table>.md`, `<table>.csv` and, for Tables 5 and 6, the figure."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from peftrepro import selection
from peftrepro.report import claims
from peftrepro.report.baselines import LEARNED_Z, Learning, against_majority, trivial_baselines
from peftrepro.report.cells import TableResult
from peftrepro.report.paper import to_paper_unit
from peftrepro.report.records import (
    LOSS_SPIKE_RATIO,
    Problem,
    Record,
    commit_labels,
    distinct,
    eval_size,
    format_count,
    plural,
    rate_text,
    rates_text,
    sets_own_rates,
    status_counts,
)
from peftrepro.report.specs import BASE_MB, PARAMS, TableSpec, lora_ranks, weights_label
from peftrepro.runs.records import NOT_APPLICABLE, UNSCORED
from peftrepro.tasks import TASKS, primary_metric


def format_cell(spec: TableSpec, cell: pd.Series, n_expected: int, runs: Sequence[Record] = (),
                name_devices: bool = False) -> str:
    """`runs`: the cell's records, for a training loss that spiked and, with `name_devices` (a table whose
    runs ran on several kinds of device or precision), where they ran."""
    # a cell without a paper value holds None, or NaN where other cells of the table have one (pandas)
    paper = f" · paper {cell['paper_printed']}" if isinstance(cell["paper_printed"], str) else ""
    if cell["status"] in ("missing", "failed", "n/a", "unscored"):
        return ("n/a" if cell["status"] == "n/a" else "—") + paper
    digits = spec.digits.get(cell["column"], spec.digits.get(cell["row"], 1))
    if PARAMS in (cell["row"], cell["column"]):
        return " / ".join(format_count(v) for v in sorted(set(cell["values"]))) + paper
    if BASE_MB in (cell["row"], cell["column"]):
        return " / ".join(sorted({f"{v:.{digits}f} MB" for v in cell["values"]})) + paper
    text = f"{cell['mean']:.{digits}f}"
    if cell["n"] > 1:
        text += f" ± {cell['std']:.{digits}f}"
    if 0 < len(cell["did_not_learn"]) < cell["n"] and len(cell["seeds"]) == len(cell["values"]):
        # a mean over a failed fit and a fit is neither: each seed's score
        text = " / ".join(f"seed {seed}: {value:.{digits}f}" for seed, value in zip(cell["seeds"], cell["values"]))
    of = f" of {n_expected}" if cell["status"] == "partial" else ""
    devices = Counter(r.device_kind for r in runs) if name_devices else None
    text = f"{text} (n={cell['n']}{of}{devices_text(devices)})"
    failures = [r.failed_training for r in runs if r.failed_training]
    kinds = sorted({f.kind for f in failures})  # "barely trained", "diverged"
    if failed := did_not_learn_label(cell):  # a failed fit: shown as such, with the baseline it did not beat
        base = cell["baseline"]
        text = f"{failed}{''.join(f', {kind}' for kind in kinds)}: {text}, {base.baseline_name} {base.baseline:.1f}"
    elif failures:  # its score is not the method's
        text = f"{' / '.join(kinds)}{_of_seeds(len(failures), cell['n'])}: {text}"
    elif spiked := sum(bool(r.loss_spike) for r in runs):  # it learned, but its spread is not seed noise
        text = f"loss spike{_of_seeds(spiked, cell['n'])}: {text}"
    return text + paper


def _of_seeds(some: int, n: int) -> str:
    return "" if some == n else f" ({some} of {n} seeds)"


def devices_text(devices: Counter[str] | None) -> str:
    """", GPU bf16" where every seed ran on one kind, ": 1 CPU fp32, 1 GPU bf16" where they differ."""
    if not devices:
        return ""
    if len(devices) == 1:
        return f", {next(iter(devices))}"
    return ": " + ", ".join(f"{n} {kind}" for kind, n in sorted(devices.items()))


def did_not_learn_label(cell: pd.Series) -> str:
    """The cell's failed-fit label where a run of it did not beat its task's trivial baseline (and how
    many of its seeds, when not all); empty otherwise."""
    if not cell["did_not_learn"]:
        return ""
    return "did not learn" + _of_seeds(len(cell["did_not_learn"]), cell["n"])


def layout(result: TableResult) -> pd.DataFrame:
    """The table as the paper lays it out: one string per cell."""
    spec, mixed = result.spec, len(device_kinds(result.records)) > 1
    lines = [dict(zip(spec.corner, _pad(labels, len(spec.corner))), **dict(zip(
        [c.labels[0] for c in spec.columns], values))) for labels, values in spec.static_rows]
    for axis_row in spec.rows:
        line = dict(zip(spec.corner, axis_row.labels))
        for axis_col in spec.columns:
            cell = result.stats(axis_row.key, axis_col.key)
            line[axis_col.labels[0]] = format_cell(spec, cell, len(result.expected_seeds),
                                                   result.cell_records(axis_row.key, axis_col.key), mixed)
        lines.append(line)
    return pd.DataFrame(lines, columns=list(spec.corner) + [c.labels[0] for c in spec.columns])


def _pad(label: str, width: int) -> tuple[str, ...]:
    return (label,) + ("",) * (width - 1)


def wide_csv(result: TableResult) -> pd.DataFrame:
    """Numeric wide form: the paper's rows; per paper column its mean, std, n, paper value, status."""
    spec = result.spec
    lines = []
    for axis_row in spec.rows:
        line: dict[str, Any] = dict(zip(spec.corner, axis_row.labels))
        for axis_col in spec.columns:
            cell = result.stats(axis_row.key, axis_col.key)
            name = axis_col.labels[0]
            line |= {f"{name} mean": cell["mean"], f"{name} std": cell["std"], f"{name} n": cell["n"],
                     f"{name} paper": cell["paper"], f"{name} status": did_not_learn_label(cell) or cell["status"]}
        lines.append(line)
    return pd.DataFrame(lines)


def header_lines(result: TableResult) -> list[str]:
    records = result.records
    models = distinct(r.model_label for r in records)
    data = distinct(f"{r.task}: {d['train_examples']} train / {eval_size(r)} ({d.get('eval_split')})"
                    for r in records for d in [r.raw.get("data") or {}]
                    if d.get("train_examples") is not None)  # not an n/a run, which loads no data
    commits = commit_labels(records)
    ran_on = [f"{where} ({plural(n, 'run')})" for where, n in _count(r.hardware for r in records)]
    statuses = status_counts(records)
    return [
        f"- Profile: {', '.join(distinct(r.profile for r in records)) or '— (no records)'}"
        + (f" (records of profile(s) {', '.join(result.other_profiles)} also exist: --profile NAME)"
           if result.other_profiles else ""),
        f"- Model: {'; '.join(models) or '—'}",
        f"- Data: {'; '.join(data) or '—'}",
        f"- Commit(s): {', '.join(commits) or '—'}",
        f"- Seeds expected: {', '.join(map(str, result.expected_seeds)) or '—'}",
        f"- Ran on: {'; '.join(ran_on) or '—'}",
        f"- Records: {statuses['ok']} ok, {statuses['failed']} failed, {statuses[NOT_APPLICABLE]} not applicable, "
        f"{statuses[UNSCORED]} unscored; left out: {result.superseded} older record(s) of "
        f"the same run key, {result.replaced} older run(s) of the same cell and seed under another run key "
        f"(config or code changed since), {_problem_counts(result.problems)}",
        *_trained_elsewhere_lines(records),
        f"- Paper values: {result.spec.paper_source}",
        "- Each cell: our mean ± std over seeds (n = number of seeds) · the paper's printed value."
        + (f" Its runs ran on {' and '.join(kinds)}, whose numerics differ: each cell names where its seeds ran."
           if len(kinds := device_kinds(records)) > 1 else ""),
    ]


def _problem_counts(problems: Sequence[Problem]) -> str:
    """How many files were left out as unreadable and how many as stale copies (readable, but of an
    earlier run of their original), e.g. "0 unreadable file(s), 1 stale copy"."""
    stale = sum(p.kind == "stale copy" for p in problems)
    return f"{len(problems) - stale} unreadable file(s)" + (
        f", {stale} stale cop{'y' if stale == 1 else 'ies'}" if stale else "")


def device_kinds(records: Sequence[Record]) -> list[str]:
    """The kinds of device and precision (Record.device_kind) the table's runs that trained ran on."""
    return distinct(r.device_kind for r in records if r.status != NOT_APPLICABLE)


def _trained_elsewhere_lines(records: Sequence[Record]) -> list[str]:
    """Runs that evaluated the weights of another experiment's run of the same training (usually the
    learning-rate selection's chosen point, seed 0), named with the run that trained them."""
    runs = [f"{r.method.get('name')} seed {r.seed} ← {r.trained_in.get('experiment')}/{r.trained_in.get('run_key')}"
            for r in records if r.trained_in and r.status in ("ok", UNSCORED)]
    if not runs:
        return []
    verb = "evaluates" if len(runs) == 1 else "evaluate"
    return [f"- Trained by another run: {plural(len(runs), 'run')} {verb} the kept weights of a run that trained "
            f"with the same config, seed and data and was evaluated on another split (`trained_in` in the record): "
            f"{', '.join(runs)}"]


def _count(values: Iterable[str]) -> list[tuple[str, int]]:
    return sorted(Counter(values).items())


def make_command(result: TableResult) -> str:
    """The command that runs the table's missing runs, e.g. `make table-rank PROFILE=smoke`."""
    return f"make {result.spec.make_target}" + (f" PROFILE={result.profile}" if result.profile else "")


def incomplete_lines(result: TableResult) -> list[str]:
    spec = result.spec
    lines = []
    for _, cell in result.cells[result.cells["status"] != "ok"].iterrows():
        if not spec.applies(cell["row"], cell["column"]):  # n/a by the table's design, said in its notes
            continue
        where = spec.cell_label(cell["row"], cell["column"])
        if cell["status"] == "missing":
            why = f"no record (`{make_command(result)}` makes it)"
        elif cell["status"] == "partial":
            lacking = sorted(set(result.expected_seeds) - set(cell["seeds"]))
            why = f"seed(s) {lacking} missing" + (f": {'; '.join(cell['problems'])}" if cell["problems"] else "")
        else:
            why = "; ".join(cell["problems"]) or cell["status"]
        lines.append(f"- {cell['status'].upper()} {where}: {why}")
    metric_cells = result.metric_cells
    for _, cell in metric_cells[metric_cells["hardware"].map(len) > 1].iterrows():
        lines.append(f"- MIXED HARDWARE {spec.cell_label(cell['row'], cell['column'])}: its seeds ran on "
                     f"{' and '.join(cell['hardware'])}; the spread includes the difference")
    for record in result.records:
        learning = result.learning.get(record.run_key)
        if learning and not learning.learned:
            cells = spec.cells_label(result.cells_of(record.run_key))
            failed = f"; it {problem.kind} ({problem.curve})" if (problem := record.failed_training) else ""
            lines.append(f"- DID NOT LEARN {cells}, seed {record.seed} (`{record.run_key}`): {learning}, not above "
                         f"its trivial baseline by {LEARNED_Z:g} standard errors (see Trivial baselines), so its cell "
                         f"judges no claim{failed}")
    for record in result.records:  # how the loss of a run that learned (or was not judged so) went wrong
        learning = result.learning.get(record.run_key)
        if learning and not learning.learned:
            continue
        cells = spec.cells_label(result.cells_of(record.run_key))
        where = f"{cells}, seed {record.seed} (`{record.run_key}`)"
        if problem := record.failed_training:
            lines.append(f"- {problem.kind.upper()} {where}: training {problem.curve}; its score reflects a failed "
                         "fit, not the method, and no claim is judged on it")
        elif spike := record.loss_spike:
            lines.append(f"- LOSS SPIKE {where}: training {spike} (more than {LOSS_SPIKE_RATIO:g}× its lowest "
                         "before); it trained on, so the run stays in its cell")
    for record in result.unplaced:
        lines.append(f"- NOT PLACED {record.path}: task {record.task}, method {dict(record.method)} "
                     "matches no cell of this table (changed experiment file?)")
    for problem in result.problems:
        lines.append(f"- {problem.kind.upper()} {problem.path}: {problem.reason}")
    return lines


_UNRECORDED = object()  # a choice the config does not name (older records, or another method's key)


def choice_lines(result: TableResult) -> list[str]:
    """Each choice as recorded in the runs' resolved configs, per task where tasks differ and with
    the methods of each value where methods differ (e.g. one learning rate per method). A run that
    could not apply to its model trained nothing, so its config chose nothing."""
    lines = []
    ran = [record for record in result.records if record.status != NOT_APPLICABLE]
    for choice in result.spec.choices:
        per_task: dict[str, dict[str, set[str]]] = {}  # task -> value -> methods
        for record in ran:
            method = str(record.method.get("name"))
            value = record.get(choice.path, default=_UNRECORDED)
            if value is not _UNRECORDED and (not choice.methods or method in choice.methods):
                value_text = (choice.null if value is None else choice.show(value) if choice.show
                              else json.dumps(value, default=str, ensure_ascii=False))
                per_task.setdefault(record.task, {}).setdefault(value_text, set()).add(method)
        shown_per_task = {task: _values_text(values) for task, values in sorted(per_task.items())}
        if not shown_per_task:  # a choice of some methods only waits for their first run
            some_ran = not choice.methods or any(record.method.get("name") in choice.methods for record in ran)
            shown = "not recorded" if some_ran else f"no run of {', '.join(choice.methods)} yet"
        elif len(set(shown_per_task.values())) == 1:
            shown = next(iter(shown_per_task.values()))
        else:
            shown = "; ".join(f"{task}: {text}" for task, text in shown_per_task.items())
        lines.append(f"- {choice.what} (`{choice.path}`): {shown}")
    return lines + [f"- {note}" for note in result.spec.notes]


def _values_text(methods_by_value: Mapping[str, set[str]]) -> str:
    if len(methods_by_value) == 1:
        return next(iter(methods_by_value))
    return ", ".join(f"{value} ({', '.join(sorted(methods))})"
                     for value, methods in sorted(methods_by_value.items(), key=lambda item: _value_order(item[0])))


def _value_order(text: str) -> tuple[int, float, str]:
    """Numbers by value (1e-4 before 3e-3), then the rest as text."""
    try:
        return 0, float(text), ""
    except ValueError:
        return 1, 0.0, text


def baseline_lines(result: TableResult) -> list[str]:
    """Each task's trivial baseline on the table's evaluation set, as the runs were checked against it
    (one per backbone where the table has several, e.g. GPT-2 M and L)."""
    several = len({r.model.get("name") for r in result.records}) > 1
    known: dict[tuple[str, str], tuple[str, float]] = {}  # (task, " on <backbone>" or "") -> (name, value)
    for record in result.records:
        if (learning := result.learning.get(record.run_key)) is not None:
            on = f" on {record.model.get('name')}" if several else ""
            known.setdefault((record.task, on), (learning.baseline_name, learning.baseline))
    finished = {r.task for r in result.records if r.status == "ok"}
    for task in set(result.spec.tasks) - finished:  # no table run to check yet: the zero-shot runs alone
        per_backbone = trivial_baselines(task, result.baselines)
        for backbone, baseline in per_backbone.items():
            known[(task, f" on {backbone}" if len(per_backbone) > 1 else "")] = baseline
    missing = sorted(finished - {task for task, _ in known})
    lines = [f"- {task}{on} (`{primary_metric(task)}`): {name} {value:.1f}"
             + (" (the backbone as loaded, evaluated on the same examples: `make baselines`)"
                if name == "zero-shot" else " (the share of its most frequent label)")
             for (task, on), (name, value) in sorted(known.items())]
    lines += [f"- {task} (`{primary_metric(task)}`): not known yet ("
              + ("no run kept its predictions to count the labels" if task == "mnli"
                 else "no zero-shot run on these examples: `make baselines`") + "), so no run of it is checked"
              for task in missing]
    told = {task for task, _ in known}
    unchecked = [r for r in result.records if r.task in told and r.status == "ok" and r.run_key not in result.learning
                 and primary_metric(r.task) in r.metrics]
    if unchecked:  # a failed fit among them would go unnamed: say which runs the guard could not see
        lines.append(f"- Not checked against it: {plural(len(unchecked), 'run')} with no zero-shot run on the same "
                     "examples and backbone, or no saved predictions (" + ", ".join(f"`{r.run_key}`" for r in unchecked)
                     + "); their cells judge claims unchecked")
    return lines


# what a page with no run yet can say of the selection: only the runs' records tell the profile's choice
SELECTION_BY_PROFILE = ("A profile that selects its learning rates (`lr_selection: true`, as mini does) runs `make "
                        "select-lr` before a table's runs; one that sets them itself (smoke, paper) does not.")


NO_SELECTION_YET = "no selection run yet (`make select-lr`)"


def fixed_rates_line(records: Sequence[Record]) -> str:
    """The learning-rate line of runs whose profile sets its rates itself (`sets_own_rates`)."""
    return (f"- No selection: profile {', '.join(distinct(r.profile for r in records))} sets its learning rates "
            f"itself (`lr_selection: false`): {', '.join(rates_text(r.get('train.lr') for r in records))}.")


def lr_lines(result: TableResult, runs: Sequence[Record] | None = None, whose: str = "the table's runs") -> list[str]:
    """Per (task, method) of the table, and per backbone where it has several: the selection's grid with
    its dev scores and choice, and the rate the table's runs (or `runs`, e.g. every table's, named
    `whose`) used and where (read from the lr_search records and the runs' own)."""
    if sets_own_rates(result.records):
        return [fixed_rates_line(result.records)]
    runs = [r for r in (result.records if runs is None else runs) if r.get("lr_selection")]
    table_backbones = set(distinct(r.model.get("name") for r in result.records))
    lines = []
    for task in result.spec.tasks:
        metric = str(TASKS[task].selection_metric)
        for method in result.spec.methods:
            points = [r for r in result.lr_search if r.task == task and r.method.get("name") == method
                      and (not table_backbones or r.model.get("name") in table_backbones)]
            backbones = distinct(r.model.get("name") for r in points)
            for backbone in backbones or [None]:
                theirs = [r for r in runs if r.task == task and r.method.get("name") == method
                          and r.status == "ok" and backbone in (None, r.model.get("name"))]
                used = rates_text(r.get("train.lr") for r in theirs)
                label = f"{task} / {method}" + (f" on {backbone}" if len(backbones) > 1 else "")
                ours = [r for r in points if r.model.get("name") == backbone]
                if not ours:
                    lines.append(f"- {label}: {NO_SELECTION_YET}"
                                 + (f"; {whose} used {', '.join(used)}" if used else ""))
                    continue
                lines.append(_search_line(label, metric, ours, theirs, whose))
    return lines


@dataclass(frozen=True)
class Replayed:
    """One (task, method)'s selection as the search sees it: the latest record per rate of its latest
    configuration (`latest`), their dev scores in the paper's unit, each rate's ladder step and the
    replayed search state."""

    last: Record
    start: float  # the method's start value: step 0 of its ladder
    latest: dict[float, Record]
    scores: dict[float, float]
    step_of: dict[float, int]
    state: selection.Search
    against_majority: dict[float, Learning]  # MultiNLI: each scored rate against the dev split's majority class

    @property
    def not_applicable(self) -> bool:
        """Every point is a method the model cannot run: lr_search chooses nothing, and nothing is left."""
        return all(r.status == NOT_APPLICABLE for r in self.latest.values())


def replay_points(metric: str, points: Sequence[Record]) -> Replayed | str:
    """The selection's state from its points (`selection.replay`), or why it cannot be replayed."""
    last = max(points, key=lambda r: r.created_at)
    ours = [r for r in sorted(points, key=lambda r: r.created_at)
            if r.method == last.method and r.get("task.eval_split") == "dev" and r.get("train.lr") is not None]
    latest = {float(r.get("train.lr")): r for r in ours}
    if not latest:
        return "no selection point evaluated on the dev split yet (`make select-lr`)"
    start = last.get(f"lr_search.start.{last.method.get('name')}")
    if start is None or not all(map(selection.on_ladder, [start, *latest])):
        return (f"{plural(len(latest), 'dev-split run')} that the selection did not make "
                "(no `lr_search.start`, or rates off its ladder), so no choice is shown")
    scores = {lr: to_paper_unit(metric, float(r.metrics[metric]))
              for lr, r in latest.items() if r.status == "ok" and metric in r.metrics}
    step_of = {lr: selection.rung_of(lr) - selection.rung_of(start) for lr in latest}
    checks = {lr: check for lr, r in latest.items()
              if lr in scores and r.task == "mnli" and (check := against_majority(r, metric)) is not None}
    state = selection.replay({step_of[lr]: scores.get(lr) for lr in latest},
                             int(last.get("lr_search.width") or 3), int(last.get("lr_search.max_points") or 6),
                             {step_of[lr]: check.learned for lr, check in checks.items()})
    return Replayed(last, float(start), latest, scores, step_of, state, checks)


# the selection metrics (tasks' `selection_metric`) as a reader of the paper names them
DEV_METRIC_NAMES = {"bleu": "BLEU", "accuracy_dev": "accuracy (%)", "lf_accuracy": "logical-form accuracy (%)"}


def _search_line(label: str, metric: str, points: Sequence[Record], runs: Sequence[Record],
                 whose: str = "the table's runs") -> str:
    """One search's grid as the selection sees it, where it ran, its choice once it has decided, the
    points whose training failed (diverged or barely trained), the rates the table's `runs` used where
    not the choice, the machines where they used the choice though no point of the grid ran there, and
    the points of an earlier configuration the search was moved from."""
    return _grid_line(label, metric, points, runs, whose) + _set_aside_text(metric, points)


def _set_aside_text(metric: str, points: Sequence[Record]) -> str:
    """The dev scores of points run on another configuration than the search's latest (its representative
    was changed since): kept, as the evidence for the change, but not part of the grid."""
    last = max(points, key=lambda r: r.created_at)
    earlier: dict[str, dict[float, Record]] = {}  # per configuration (its options in full), the latest per rate
    for r in sorted(points, key=lambda r: r.created_at):
        if r.method != last.method and r.get("task.eval_split") == "dev" and r.get("train.lr") is not None:
            earlier.setdefault(json.dumps(r.method, sort_keys=True), {})[float(r.get("train.lr"))] = r
    parts = []
    for by_rate in earlier.values():
        scores = []
        for lr, r in sorted(by_rate.items()):
            if r.status != "ok" or metric not in r.metrics:
                scores.append(f"{rate_text(lr)}: {r.status}")
                continue
            check = against_majority(r, metric) if r.task == "mnli" else None
            missed = " (majority class not beaten)" if check is not None and not check.learned else ""
            failed = f" ({why})" if (why := r.failed_training) else ""
            scores.append(f"{rate_text(lr)}: {to_paper_unit(metric, float(r.metrics[metric])):.1f}{missed}{failed}")
        parts.append(f"{_options_text(next(iter(by_rate.values())))}: {' · '.join(scores)}")
    return f"; set aside, from an earlier configuration of this search: {'; '.join(parts)}" if parts else ""


def _grid_line(label: str, metric: str, points: Sequence[Record], runs: Sequence[Record], whose: str) -> str:
    replayed = replay_points(metric, points)
    if isinstance(replayed, str):
        return f"- {label}: {replayed}"
    latest, scores, step_of, state = replayed.latest, replayed.scores, replayed.step_of, replayed.state
    if replayed.not_applicable:
        why = (replayed.last.raw.get("error") or {}).get("message", "no reason recorded")
        return f"- {label} ({_options_text(replayed.last)}): not applicable, so no rate is chosen: {why}"
    chosen = selection.ladder(replayed.start, state.best_step()) if state.decided else None
    # where the grid ran: once for the line, or per point where its points ran on different machines (or
    # precisions); a rate found stable in bf16 on a GPU need not be in fp32 on a CPU, or the reverse
    grid_on = distinct(r.hardware for r in latest.values())
    mixed = len(grid_on) > 1
    recorded = all(r.hardware_info for r in latest.values())  # records old enough say nothing of it
    shown = []
    for lr, r in sorted(latest.items()):
        text = f"{rate_text(lr)}: {scores[lr]:.1f}" if lr in scores else f"{rate_text(lr)}: {r.status}"
        if mixed:
            text += f" on {r.hardware}"
        if lr in scores and (why := r.failed_training):
            text += f" ({why})"
        if step_of[lr] not in state.scores:
            text += " (outside the current grid)"
        shown.append(f"**{text}**" if lr == chosen else text)
    where = f", on {grid_on[0]}" if len(grid_on) == 1 and recorded else ""
    line = f"- {label} ({_options_text(replayed.last)}){where}: dev {DEV_METRIC_NAMES.get(metric, metric)} {' · '.join(shown)}"
    if chosen is None:
        failed = [step for step, score in state.scores.items() if score is None and step in step_of.values()]
        return line + ("; not decided: a point failed, and the selection waits for it to be rerun" if failed
                       else f"; not decided yet ({len(scores)} of its rates scored, the selection has more to run"
                       + ("; no rate beat the dev split's majority class, so the grid grows past its edges)"
                          if not state.any_learned else ")"))
    line += f" → {rate_text(chosen)}" + (f" (on the grid's edge: the search stops at {state.max_points} rates)"
                                          if state.at_edge else "")
    # no rate of the grid did better than answering one label: the choice among them is a draw of noise
    if not state.any_learned and (check := replayed.against_majority.get(chosen)):
        line += (f"; **no rate of the grid learned**: the best, {check}, does not beat the dev split's "
                 "majority class, so the choice among its rates is noise")
    if (used := rates_text(r.get("train.lr") for r in runs)) and used != [rate_text(chosen)]:
        line += f"; **{whose} used {', '.join(used)}**, not the choice"
    with_choice = [r for r in runs if r.hardware_info and rates_text([r.get("train.lr")]) == [rate_text(chosen)]]
    if recorded and (elsewhere := [d for d in distinct(r.hardware for r in with_choice) if d not in grid_on]):
        line += f"; {whose} on {' and '.join(elsewhere)} use it too, though no point of the grid ran there"
    return line


def selection_points_left(results: Iterable[TableResult]) -> Counter[str]:
    """Per task, the fewest selection points still to run before every (task, method) of the tables has
    its learning rate: an undecided search's pending points (more follow while the winner sits on the
    grid's edge), a first window for a search not started. A search that cannot be replayed counts 0."""
    results = list(results)
    if not any(r.get("lr_selection") for result in results for r in [*result.records, *result.lr_search]):
        return Counter()  # no record of this profile selects its rates (or none ran yet): nothing to count
    widths = [int(r.get("lr_search.width")) for result in results for r in result.lr_search
              if r.get("lr_search.width") is not None]
    first_window = len(selection.Search({}, width=max(widths, default=3)).initial_steps())
    left: Counter[str] = Counter()
    seen = set()
    for result in results:
        for task in result.spec.tasks:
            for method in result.spec.methods:
                if (task, method) in seen:
                    continue
                seen.add((task, method))
                points = [r for r in result.lr_search if r.task == task and r.method.get("name") == method]
                if not points:
                    left[task] += first_window
                elif isinstance(replayed := replay_points(str(TASKS[task].selection_metric), points), Replayed):
                    left[task] += 0 if replayed.not_applicable else len(replayed.state.pending())
    return +left  # without the tasks whose selection is done


def dev_splits_text(tasks: Iterable[str]) -> str:
    """Where each task's dev split comes from, e.g. "MultiNLI, held-out pairs of its training subset"."""
    return "; ".join(TASKS[task].dev_split_text for task in tasks)


def _options_text(record: Record) -> str:
    """The configuration a search ran on, in the paper's terms (e.g. "W_q,W_v r=8")."""
    method = record.method
    if method.get("name") == "lora":
        ranks = lora_ranks(method)
        return f"{weights_label(ranks)} r={'/'.join(map(str, sorted(set(ranks.values()))))}"
    shown = {k: v for k, v in method.items() if k in ("r", "k", "prefix_length", "infix_length", "remaining", "scores")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "its defaults"


def render_markdown(result: TableResult, claim_lines: Sequence[str]) -> str:
    from peftrepro.report.plots import (
        figure_name,  # local: importing plots loads matplotlib
    )

    spec = result.spec
    parts = [f"# {spec.title} (`{spec.name}`)", "", *header_lines(result), "",
             layout(result).to_markdown(index=False), ""]
    figure = figure_name(spec.name)
    if figure:
        parts += [f"Plot: [`{figure}`]({figure}).", ""]
    incomplete = incomplete_lines(result)
    parts += ["## Missing, failed or partial cells", ""]
    parts += incomplete or ["None: every cell has every expected seed."]
    parts += ["", "## Learning rates, selected on the dev split", "",
              "One rate per (task, method), chosen by `make select-lr` on a dev split that shares no example "
              f"with the evaluation set ({dev_splits_text(spec.tasks)}), seed 0, on the configuration named; "
              "the dev score of each rate of its grid, the choice in bold. Table runs read the choice; a rate "
              "they used that is not the choice is flagged.", "", *lr_lines(result)]
    parts += ["", "## Trivial baselines", "",
              "A run \"did not learn\" when its score does not beat its task's trivial baseline on the same "
              f"examples by {LEARNED_Z:g} standard errors of the paired difference; its cell says so and judges no claim.",
              "", *(baseline_lines(result) or ["- no finished run yet"])]
    parts += ["", "## Paper's claims on our numbers", "", *claim_lines, ""]
    parts += ["## Choices and ambiguities", "", *choice_lines(result), ""]
    return "\n".join(parts)


def write_table(result: TableResult, out_dir: Path, plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{result.spec.name}.csv", out_dir / f"{result.spec.name}.md"
    wide_csv(result).to_csv(csv_path, index=False)
    md_path.write_text(render_markdown(result, claims.render(claims.evaluate(result))), encoding="utf-8")
    written = [csv_path, md_path]
    if plots:
        from peftrepro.report import plots as plotting

        written += plotting.plot(result, out_dir)
    return written
