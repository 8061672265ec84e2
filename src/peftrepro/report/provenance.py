"""REPORT.md's account of how the runs were made: where and on what they ran, the commands that
remake them, and why their numbers are not the paper's (backbone, data, schedule, decoding, the
size of difference they can resolve). Reads the records, the tables' results and the paper's numbers."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from peftrepro.report.cells import TableResult, extra_seed_runs, largest_spread_text, seed_spreads
from peftrepro.report.paper import load_paper
from peftrepro.report.records import (
    SHARED_AT,
    Record,
    at_a_time,
    commit_states,
    counted,
    distinct,
    e2e_eval_counts,
    hours,
    is_reused,
    plural,
    rates_text,
    run_seconds,
    runs_on,
)
from peftrepro.report.render import dev_splits_text
from peftrepro.report.specs import GPT3_TASKS
from peftrepro.runs.records import NOT_APPLICABLE
from peftrepro.tasks import TASKS


def parallel_text(records: Sequence[Record]) -> str:
    """", about N at once, so X of wall time" where a device's runs overlapped, else "". (A device is a
    model of CPU or GPU: runs on several GPUs of that model count as running at once.)"""
    n = at_a_time(records)
    if n < SHARED_AT:
        return ""
    return f", about {round(n)} at once, so {hours(sum(map(run_seconds, records)) / n)} of wall time"


def where_text(records: Sequence[Record]) -> str:
    if not records:
        return "No records yet."
    lines = []
    for device in distinct(r.hardware for r in records):
        mine = runs_on(records, device)
        if not mine:
            continue
        packages = mine[-1].env.get("packages") or {}
        versions = ", ".join(f"{k} {packages[k]}" for k in ("torch", "transformers", "peft-repro") if k in packages)
        details = "; ".join(part for part in (versions, threads_text(mine)) if part)
        skipped = sum(r.status == NOT_APPLICABLE for r in mine)
        stopped = f" ({skipped} of them not applicable: they stopped before training)" if skipped else ""
        lines.append(f"- {device}: {plural(len(mine), 'run')}{stopped}, {hours(sum(run_seconds(r) for r in mine))} in all"
                     f"{parallel_text(mine)} ({details}).")
    scored_later = [r for r in records if r.raw.get("scoring") and not is_reused(r)]
    if scored_later:  # decoded where Java was missing, scored afterwards (peftrepro.runs.scoring)
        lines.append(f"- Scored after the run, from its saved predictions (`scoring=auto`, no Java where it ran): "
                     f"{len(scored_later)} run(s).")
    lines.append(f"- Code: {commits_text(records)}.")
    # records name a root read through $PEFTREPRO_DATA_ROOT by that variable; another path only by its kind
    sources = distinct("a local data root" if Path(str(source)).is_absolute() else f"`{source}`"
                       for r in records if (source := (r.raw.get("data") or {}).get("source")))
    local = any(source not in ("`hub`", "`fixtures`") for source in sources)
    lines.append("- Data: " + ("; ".join(sources) or "—")
                 + (" (a folder in the layout of the README's \"Data and models\" section; `data_root=` names "
                    "another)" if local else "") + ".")
    return "\n".join(lines)


def commits_text(records: Sequence[Record]) -> str:
    """The code the runs were made with, counted: each record names its commit and each table's page
    lists its own, so a list of every commit of the study here would only be noise."""
    states = commit_states(records)
    if not states:
        return "—"
    dirty = {commit for commit, is_dirty in states if is_dirty}
    state = (f"runs of {len(dirty)} of them had uncommitted changes (\"dirty\" in their records)" if dirty
             else "no run had uncommitted changes")
    return (f"{plural(len({commit for commit, _ in states}), 'commit')}, {state}; each record names its own "
            "and each table's page lists those of its runs")


def threads_text(records: Sequence[Record]) -> str:
    """torch's intra-op threads per run: 1 where runs shared the machine, so their wall time is longer."""
    threads = (r.hardware_info.get("torch_threads") for r in records)
    return "torch threads per run: " + counted(Counter("unrecorded" if n is None else str(n) for n in threads))


def commands_text(profile: str, seeds: Sequence[int] | None, results: Mapping[str, TableResult],
                  analyses: Sequence[str] = ()) -> str:
    """The make commands that regenerate the page: each table's, then the `analyses` (targets that read
    the tables' runs, such as §7's), then the report."""
    seed_arg = f" SEEDS={','.join(map(str, seeds))}" if seeds else ""
    targets = [f"make {target} PROFILE={profile}{seed_arg}"
               for target in [*(result.spec.make_target for result in results.values()), *analyses]]
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
            labels = result.spec.cells_label(cells)
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


def backbone_text(records: Sequence[Record]) -> str:
    """The backbone named exactly: the checkpoint file a GGUF package ships, else the config's name."""
    names = []
    for record in records:
        config = record.get("model") or {}
        if config.get("source") == "gguf_package":
            names.append(f"{record.backbone} (the `{config.get('package')}` package's GGUF, "
                         "4-bit Q4_1 weights dequantised to fp32 for training)")
        elif config:
            names.append(record.backbone)
    return "; ".join(distinct(names)) or "— (no records yet)"


def lr_protocol_text(records: Sequence[Record]) -> str:
    """How the runs' learning rates were set: selected on a dev split, or fixed by the profile."""
    if not records or any(r.get("lr_selection") for r in records):
        return ("ours are selected per (task, method) from a small grid on a dev split that shares no example "
                f"with the evaluation data ({dev_splits_text(TASKS)}; next section).")
    rates = ", ".join(rates_text(r.get("train.lr") for r in records))
    return (f"ours are the profile's fixed rates ({rates}; `lr_selection: false`), not tuned per method, so a gap "
            "between two methods may be one method's rate.")


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
        text += f"; two seeds of one Table 3 setting differ by {largest_spread_text(spreads, 'BLEU', ' here')}"
    return text + "."


def scale_text(records: Sequence[Record], results: Mapping[str, TableResult]) -> str:
    """How large a difference our runs can resolve, beside the differences the paper reports."""
    paper = load_paper()
    # beside the paper's spans, the seed spreads of its own tables (not the other papers' QLoRA, pruning)
    lora_paper_tables = [result for result in results.values() if result.spec.in_report_without_runs]
    lines = []
    for task in GPT3_TASKS:
        metric = task.metric
        runs = [r for r in records
                if r.task == task.key and r.status == "ok" and r.sample_size(metric) and not is_reused(r)]
        if not runs:
            continue
        n = int(statistics.median(r.sample_size(metric) for r in runs))
        p = statistics.mean(float(r.metrics[metric]) for r in runs)
        cells = paper[(paper["table"] == "table5") & (paper["column"] == task.key)]["value"]
        text = (f"{task.name}: one accuracy is computed on {n} examples, so near {100 * p:.0f}% it has a binomial "
                f"standard error of {100 * (p * (1 - p) / n) ** 0.5:.1f} points against the whole evaluation split, "
                f"while the paper's Table 5 cells span {cells.max() - cells.min():.1f} points "
                f"({cells.min():.1f}–{cells.max():.1f})")
        if spreads := seed_spreads(lora_paper_tables, metric):
            text += f"; two seeds of one setting of Tables 4–6 differ by {largest_spread_text(spreads, 'points', ' here')}"
        lines.append(text + ".")
    if lines:
        lines.append("Accuracy differences of the size the paper reports cannot be resolved at this scale; such "
                     "a claim can only be held or not held here where cells differ by several points.")
    if (e2e := e2e_scale_text(records, results.get("table_e2e"), paper)) is not None:
        lines.insert(0, e2e)
    if not lines:
        return "No evaluated run yet."
    return (" ".join(lines) + " The claims compare two cells example by example (both are scored on the same "
            "examples), which resolves smaller gaps than two separate errors would: each claim quotes its interval.")
