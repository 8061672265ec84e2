"""The runs the paper's §7 analyses read: Table 6's LoRA runs on W_q,W_v with their kept factors.

    find_runs(runs_dir, profile, tasks, ranks, seeds)  one AdaptedRun per (task, rank, seed), or one
                                                       DataError naming every run that is missing and how to make it
    survey(runs_dir, profile, tasks, ranks, seeds)     the runs found and the Gaps (not run yet / kept no factors /
                                                       a copy whose original was rerun or is gone), without raising:
                                                       what the REPORT says is still missing
    pretrained_weights(runs, layers, weights)          the frozen W of those layers, from the one backbone the runs
                                                       trained (checked against its weights digest in the records)
    verdict(outcomes)                                  a statement judged over seeds: held / not held / inconclusive

A run's factors are its `lora_factors.safetensors` (peftrepro.methods.factors) or, for a run that
reused another table's (peftrepro.runs.reuse), the original's; a copy whose original was rerun since
(a stale copy) is not read, as its record and the factors in the original's folder are two runs'. A run
that did not learn (it does not beat its task's trivial baseline) or barely lowered its training loss is
shown but judges nothing.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from peftrepro.errors import ConfigError, DataError
from peftrepro.methods.factors import FACTORS_FILE, FactorsFile, load_factors, resolve_layers
from peftrepro.report.baselines import learning_check
from peftrepro.report.claims import HELD, INCONCLUSIVE, NOT_HELD
from peftrepro.report.records import BASELINES_EXPERIMENT, Record, load_records, parse_seeds
from peftrepro.report.specs import GPT3_TASK_NAMES
from peftrepro.runs.records import copied_from, is_stale_copy, read_record

EXPERIMENT = "table_rank"  # Table 6: LoRA at r in {1, 2, 4, 8, 64}, the W_q,W_v row among others
WEIGHTS = ("W_q", "W_v")
MAKE_THEM = ("The Table 6 runs keep their factors (conf/experiment/table_rank.yaml: lora_factors): make them with "
             "`make table-rank PROFILE={profile} SEEDS={seeds}`. Runs made without them: `make lora-factors "
             "PROFILE={profile}` exports them from the runs' adapters, on the machine that trained them; where "
             "those adapters are gone, only a rerun (`force=true`) makes them.")


@dataclass(frozen=True)
class AdaptedRun:
    """A finished LoRA run on W_q,W_v at one rank, with its kept factors."""

    record: Record
    rank: int
    factors: FactorsFile
    failed_fit: str | None  # why it judges nothing (did not learn, diverged, barely trained); None when it trained

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def seed(self) -> int:
        return int(self.record.seed)

    @property
    def middle_layer(self) -> int:
        """The paper's layer: the middle block (its 48th of 96), or the first kept one when that is not kept."""
        middle = resolve_layers(["middle"], self.factors.n_layers)[0]
        return middle if middle in self.factors.layers else self.factors.layers[0]

    def A(self, layer: int, weight: str) -> np.ndarray:
        return self.factors.get(layer, weight).A.double().numpy()

    def delta(self, layer: int, weight: str) -> np.ndarray:
        return self.factors.get(layer, weight).delta().numpy()


def qv_rank(record: Record) -> int | None:
    """r when the record is LoRA on exactly W_q and W_v at one rank r; else None."""
    from peftrepro.methods import make_method_config

    method = dict(record.method)
    try:
        ranks = make_method_config(str(method.pop("name", None)), method).canonical().get("ranks") or {}
    except (ConfigError, TypeError):
        return None
    return ranks["W_q"] if set(ranks) == set(WEIGHTS) and ranks["W_q"] == ranks["W_v"] else None


NOT_RUN, NO_FACTORS = "not run yet", "kept no factors"
STALE_COPY, ORIGINAL_GONE = "copied before a rerun", "copies of a run no longer there"


@dataclass(frozen=True)
class Gap:
    """A (task, rank, seed) whose run cannot be read: not run yet, made without its factors, or a copy of a run
    that was rerun since or is gone."""

    task: str
    rank: int
    seed: int
    why: str  # NOT_RUN, NO_FACTORS, STALE_COPY or ORIGINAL_GONE
    detail: str

    def __str__(self) -> str:
        return f"{self.task}, W_q,W_v r={self.rank}, seed {self.seed}: {self.detail}"


def survey(runs_dir: Path, profile: str, tasks: Sequence[str], ranks: Sequence[int],
           seeds: Sequence[int]) -> tuple[dict[tuple[str, int, int], Record], list[Gap]]:
    """The finished run (the latest, where a cell has several) of every (task, rank, seed) asked for that
    kept its factors, and a Gap for each of the others."""
    table = [r for r in _records(runs_dir / EXPERIMENT) if r.profile == profile and r.status == "ok"]
    latest = {(r.task, qv_rank(r), r.seed): r for r in sorted(table, key=lambda r: r.created_at)}
    found, gaps = {}, []
    for task, rank, seed in itertools.product(tasks, ranks, seeds):
        record = latest.get((task, rank, seed))
        if record is None:
            gaps.append(Gap(task, rank, seed, NOT_RUN, f"no finished `{profile}` run under {runs_dir / EXPERIMENT}"))
        elif copy_gap := _copy_gap(record):
            gaps.append(Gap(task, rank, seed, *copy_gap))
        elif not (record.original_folder / FACTORS_FILE).is_file():
            gaps.append(Gap(task, rank, seed, NO_FACTORS,
                            f"run {record.run_key} kept no {FACTORS_FILE} (in {record.original_folder})"))
        else:
            found[(task, rank, seed)] = record
    return found, gaps


def find_runs(runs_dir: Path, profile: str, tasks: Sequence[str], ranks: Sequence[int],
              seeds: Sequence[int]) -> dict[tuple[str, int, int], AdaptedRun]:
    """The finished run (the latest, where a cell has several) of every (task, rank, seed) asked for."""
    found, gaps = survey(runs_dir, profile, tasks, ranks, seeds)
    if gaps:
        raise DataError(f"{len(gaps)} of the {len(tasks) * len(ranks) * len(seeds)} runs this needs "
                        "are not there:\n  " + "\n  ".join(map(str, gaps)) + "\n"
                        + MAKE_THEM.format(profile=profile, seeds=",".join(map(str, seeds))))
    baselines = [r for r in _records(runs_dir / BASELINES_EXPERIMENT) if r.profile == profile]
    runs = {where: AdaptedRun(record, where[1], load_factors(record.original_folder / FACTORS_FILE),
                              _failed_fit(record, baselines))
            for where, record in found.items()}
    backbones = {run.record.model.get("weights_sha256"): run.record.model_label for run in runs.values()}
    if len(backbones) != 1:
        raise DataError(f"the runs trained {len(backbones)} different backbones ({sorted(backbones.values())}, told "
                        "apart by their weights digests); §7 compares runs of one backbone")
    return runs


def pretrained_weights(runs: Iterable[AdaptedRun], layers: Iterable[int], weights: Sequence[str] = WEIGHTS
                       ) -> dict[tuple[int, str], np.ndarray]:
    """The frozen W (d_out × d_in) of each layer and weight, from the backbone the runs trained (loaded
    as their records describe it; DataError when the loaded weights differ from those it trained)."""
    from peftrepro.methods.factors import frozen_weight
    from peftrepro.models import load_model, weights_sha256

    first = next(iter(runs)).record  # find_runs checked that every run trained the same backbone
    model, _ = load_model(first.raw["config"]["model"])
    if weights_sha256(model) != first.model.get("weights_sha256"):
        raise DataError(f"the backbone loaded for W ({first.model_label}) is not bit-identical to the one "
                        "the runs trained (weights digest differs from their records)")
    return {(layer, w): frozen_weight(model, layer, w).double().numpy() for layer in layers for w in weights}


def verdict(outcomes: Sequence[bool | None], undecided: str = "undecided") -> str:
    """A statement over seeds: held where every run says so, not held where none does, else inconclusive.
    None is a run that can say neither (a tie, a value at chance level): `undecided` names why."""
    if not outcomes:
        return f"{INCONCLUSIVE} (no run that learned)"
    open_ = sum(o is None for o in outcomes)
    held = sum(bool(o) for o in outcomes if o is not None)  # numpy's bools too
    if held == len(outcomes):
        return HELD
    if held == 0 and not open_:
        return NOT_HELD
    return f"{INCONCLUSIVE} (held in {held} of {len(outcomes)}" + (f", {open_} {undecided}" if open_ else "") + ")"


def runs_table(runs: Mapping[tuple[str, int, int], AdaptedRun]) -> list[str]:
    """Markdown: the runs read, with how far training moved A and whether each run learned."""
    lines = ["| Task | r | Seed | Run (folder of its factors) | A moved from its init, W_q / W_v (middle layer) | Judges |",
             "|---|---|---|---|---|---|"]
    for (task, rank, seed), run in sorted(runs.items()):
        drift = [run.factors.a_drift.get(f"{run.middle_layer}.{w}") for w in WEIGHTS]
        moved = " / ".join("not recorded" if d is None else f"{100 * d:.1f} %" for d in drift)
        judges = f"no: {run.failed_fit}" if run.failed_fit else "yes"
        lines.append(f"| {task} | {rank} | {seed} | `{run.record.original_folder.as_posix()}` | {moved} | {judges} |")
    return lines


def layer_label(layer: int, n_layers: int) -> str:
    """1-based, as the paper counts ("48th of 96"): block 14 of SmolLM2 is "15 of 30"."""
    return f"{layer + 1} of {n_layers}"


def _copy_gap(record: Record) -> tuple[str, str] | None:
    """(why, detail) where `record` is a copy whose original cannot stand behind it: gone, or rerun since
    the copy was made (its folder then holds the new run's factors); None for a run of its own or a
    current copy."""
    if (source := copied_from(record.raw)) is None:
        return None
    original, name = read_record(record.original_folder), "/".join(source)
    if original is None:
        return ORIGINAL_GONE, f"run {record.run_key} is a copy of {name}, which is no longer in {record.original_folder}"
    if is_stale_copy(record.raw, original):
        return STALE_COPY, (f"run {record.run_key} is a copy of {name}, which was rerun since (status "
                            f"{original.get('status')}); a Table 6 sweep copies it again once that rerun is ok")
    return None


def _records(folder: Path) -> list[Record]:
    return load_records(folder)[0] if folder.is_dir() else []


def _failed_fit(record: Record, baselines: Sequence[Record]) -> str | None:
    learning = learning_check(record, baselines)
    if learning is not None and not learning.learned:
        return f"did not learn ({learning})"
    return str(record.failed_training) if record.failed_training else None


@dataclass(frozen=True)
class AnalysisArgs:
    """What a §7 analysis reads (python -m peftrepro.report.subspace / .amplification)."""

    runs: Path
    out: Path
    profile: str
    seeds: list[int]
    tasks: list[str]
    ranks: tuple[int, ...]


def analysis_args(prog: str, description: str | None, paper_ranks: tuple[int, int], argv: Sequence[str] | None,
                  seeds_help: str | None = None) -> AnalysisArgs:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--seeds", default="0,1", help=seeds_help)
    parser.add_argument("--tasks", default=",".join(GPT3_TASK_NAMES))
    parser.add_argument("--ranks", default=",".join(map(str, paper_ranks)), help="the low and the high rank")
    args = parser.parse_args(argv)
    return AnalysisArgs(args.runs, args.out, args.profile, parse_seeds(args.seeds) or [], args.tasks.split(","),
                        tuple(int(r) for r in args.ranks.split(",")))
