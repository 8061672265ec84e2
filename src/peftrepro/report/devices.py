"""The same runs on two devices: how far a table's mixing of GPU bf16 and CPU fp32 cells can move a number.

A run rerun with force=true on another device replaces its record; the one it replaced, kept under
`results/archive/device-pairs/runs/` (as the code wrote it, only moved), pairs with it: same experiment,
run key, configuration and seed, another device. Per pair the primary metric on each device and the
share of evaluated examples whose prediction is the same; over the pairs of each two devices the mean
gap with its 95 % interval (Student's t, one degree of freedom fewer than pairs) and the gaps' spread.
The claims correct a comparison of cells run on different kinds of device by that mean gap, and take
its standard error into the interval (`DeviceGap`, per metric both runs of a pair scored).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from peftrepro.report.intervals import CONFIDENCE_TEXT, quantile
from peftrepro.report.paper import to_paper_unit
from peftrepro.report.records import Record, is_reused, load_records, plural
from peftrepro.report.specs import TABLES
from peftrepro.tasks import primary_metric

ARCHIVE = Path("archive/device-pairs")  # under the results folder


@dataclass(frozen=True)
class DeviceGap:
    """How one kind of device scores against another on one metric, from the same runs on both: the
    offset a comparison of cells run on different kinds is corrected by (claims), with its error."""

    kinds: tuple[str, str]  # in sorted order, e.g. ("CPU fp32", "GPU bf16"); a gap is the first's − the second's
    metric: str
    gaps: tuple[float, ...]  # one per pair, in the paper's unit

    @property
    def mean(self) -> float:
        return statistics.fmean(self.gaps)

    @property
    def mean_se(self) -> float:
        """The standard error of the mean gap (nan with one pair)."""
        return statistics.stdev(self.gaps) / math.sqrt(len(self.gaps)) if len(self.gaps) > 1 else math.nan


@dataclass(frozen=True)
class DevicePair:
    """One configuration and seed run on two devices."""

    earlier: Record  # the archived run, replaced by the rerun
    later: Record

    @property
    def metric(self) -> str:
        return primary_metric(self.later.task) or ""

    def value(self, record: Record, metric: str | None = None) -> float:
        metric = metric or self.metric
        return to_paper_unit(metric, float(record.metrics[metric]))

    @property
    def metrics(self) -> list[str]:
        """The metrics both runs scored (a finite number in each): the primary one and any other."""
        return sorted(m for m in self.earlier.metrics if _finite(self.earlier.metrics.get(m))
                      and _finite(self.later.metrics.get(m)))

    @cached_property  # sorting the pairs and printing them both read it; observe() parses the record
    def cell(self) -> str:
        """Where the tables show it: "Table 4, LoRA (r_q=r_v=8) × MNLI-m Acc. (%), seed 0"."""
        spec = TABLES.get(self.later.experiment)
        placed = [(o.row, o.column) for o in (spec.observe(self.later) or [])  # the primary metric's cell
                  if o.metric == self.metric] if spec else []
        where = f"{spec.short_title}, {spec.cells_label(placed[:1])}" if placed else self.later.experiment
        return f"{where}, seed {self.later.seed} (run {self.later.run_key})"

    @property
    def kinds(self) -> tuple[str, str]:
        """The two devices, in one fixed order whichever ran first: ("CPU fp32", "GPU bf16")."""
        return tuple(sorted((self.earlier.device_kind, self.later.device_kind)))  # type: ignore[return-value]

    @property
    def gap(self) -> float:
        """The primary metric on the first of `kinds` minus on the second, in the paper's unit."""
        return self.gap_on(self.metric)

    def gap_on(self, metric: str) -> float:
        first, second = (self.earlier, self.later) if self.earlier.device_kind == self.kinds[0] else (
            self.later, self.earlier)
        return self.value(first, metric) - self.value(second, metric)

    @property
    def agreement(self) -> float | None:
        """The share of evaluated examples whose prediction is the same on both devices; None where a
        run's predictions are missing or name other examples."""
        rows = [r.prediction_rows() for r in (self.earlier, self.later)]
        if any(not r for r in rows) or self.earlier.example_ids() != self.later.example_ids():
            return None
        return statistics.fmean(a.get("prediction") == b.get("prediction") for a, b in zip(*rows))


def device_pairs(runs_dir: Path, profile: str | None, records: Sequence[Record] | None = None) -> list[DevicePair]:
    """The pairs of the profile: each archived record (beside `runs_dir`'s parent) whose experiment and run
    key a current record has, on another kind of device, both scored on the task's primary metric.
    `records`: those of `runs_dir`, where the caller has read them already."""
    archive = runs_dir.parent / ARCHIVE / "runs"
    if not archive.is_dir():
        return []
    records = load_records(runs_dir)[0] if records is None else records
    current = {(r.experiment, r.run_key): r for r in records if not is_reused(r)}
    pairs = []
    for earlier in load_records(archive)[0]:
        later = current.get((earlier.experiment, earlier.run_key))
        if (later is None or earlier.profile != profile or later.device_kind == earlier.device_kind
                or any(r.status != "ok" or not _finite(r.metrics.get(primary_metric(r.task)))
                       for r in (earlier, later))):
            continue
        pairs.append(DevicePair(earlier, later))
    return sorted(pairs, key=lambda p: p.cell)  # "Table 4, …, seed 0" first: in the tables' order


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def device_gaps(pairs: Sequence[DevicePair], primary_only: bool = False) -> tuple[DeviceGap, ...]:
    """The pairs' gaps, one DeviceGap per two kinds of device and metric (every metric both runs of a
    pair scored, or only the primary one)."""
    gaps: dict[tuple[tuple[str, str], str], list[float]] = {}
    for pair in pairs:
        for metric in [pair.metric] if primary_only else pair.metrics:
            gaps.setdefault((pair.kinds, metric), []).append(pair.gap_on(metric))
    return tuple(DeviceGap(kinds, metric, tuple(values)) for (kinds, metric), values in sorted(gaps.items()))


def device_pairs_text(pairs: Sequence[DevicePair]) -> str:
    """The REPORT's paragraph (after a blank line): each pair, then per pair of devices the mean gap
    with its interval; "" without pairs."""
    if not pairs:
        return ""
    were = "was" if len(pairs) == 1 else "were"
    lines = [f"**The same runs on two devices.** {plural(len(pairs), 'run')} {were} rerun (force=true) on "
             f"another device; the records they replaced are kept under `{ARCHIVE.as_posix()}/`. Each pair is one "
             "configuration and seed (one run key):", ""]
    for pair in pairs:
        agreement = pair.agreement
        same = "" if agreement is None else f"; the same prediction on {100 * agreement:.1f} % of examples"
        lines.append(f"- {pair.cell}: {pair.earlier.device_kind} {pair.value(pair.earlier):.1f} → "
                     f"{pair.later.device_kind} {pair.value(pair.later):.1f}{same}")
    lines.append("")
    gaps = device_gaps(pairs, primary_only=True)
    for gap in gaps:
        first, second = gap.kinds
        on = f" on {gap.metric}" if len(gaps) > len({g.kinds for g in gaps}) else ""  # several metrics: name each
        if len(gap.gaps) == 1:
            lines.append(f"Gap{on} ({first} − {second}): {gap.mean:+.2f} points; one pair gives no interval.")
            continue
        k = len(gap.gaps)
        lines.append(f"Mean gap{on} ({first} − {second}): {gap.mean:+.2f} ± {quantile(k - 1) * gap.mean_se:.2f} "
                     f"points ({CONFIDENCE_TEXT}, t with {k - 1} df; the gaps' std {statistics.stdev(gap.gaps):.2f}).")
    lines.append("A gap mixes the devices' numerics with the run-to-run noise that one device shows too. The tables "
                 "name each cell's device; a claim that compares cells run on different kinds of device in different "
                 "shares corrects its difference by the mean gap (times the difference in shares) and adds that "
                 "mean's standard error to its interval (from two pairs on a metric).")
    return "\n\n" + "\n".join(lines)
