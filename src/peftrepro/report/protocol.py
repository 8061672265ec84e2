"""REPORT.md's sections on the fair protocol: the learning rates selected on dev splits, each task's
trivial baseline, Table 3's LoRA beside LoRA at a plain peft loop's budget, and each claim's verdict
under the untuned protocol (its archived tables) and now."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from peftrepro.report import claims
from peftrepro.report.cells import TableResult, largest_spread_text, seed_spreads
from peftrepro.report.records import Record, is_reused, plural, sets_own_rates
from peftrepro.report.render import NO_SELECTION_YET, SELECTION_BY_PROFILE, baseline_lines, fixed_rates_line, lr_lines

# a row of a table's "Paper's claims" section, as the archived tables printed it
CLAIM_ROW = re.compile(r"^\| (?P<claim>[^|]+) \| [^|]+ \| \*\*(?P<verdict>held|not held|inconclusive)\*\*"
                       r"(?P<marginal> \(marginal\))?")


def selected_lr_text(results: Mapping[str, TableResult]) -> str:
    """Every (task, method)'s learning-rate selection once, from the selection's own records."""
    records = [r for result in results.values() for r in result.records]
    if sets_own_rates(records):  # the tables not run yet will not select either: one line for all
        return fixed_rates_line(records)
    if not records and not any(result.lr_search for result in results.values()):
        return f"- No run yet. {SELECTION_BY_PROFILE}"
    lines: dict[str, str] = {}  # "- task / method" -> its line, with the rates and machines of every table's runs
    for result in results.values():
        for line in lr_lines(result, records, whose="the tables' runs"):
            key = line.split(" (")[0].split(":")[0]
            if key not in lines or NO_SELECTION_YET in lines[key]:  # a table that saw the selection's runs wins
                lines[key] = line
    return "\n".join(lines.values())


def lora_scale(record: Record) -> float | None:
    """α/r, the factor LoRA's update BA is scaled by (the largest of its matrices' where their ranks
    differ); None for a run of another method or on a 4-bit base (QLoRA's table, not a rank sweep)."""
    method = record.method
    if method.get("name") != "lora" or method.get("quantize") or method.get("alpha") is None:
        return None
    rank = min((method.get("ranks") or {}).values(), default=method.get("r"))
    return float(method["alpha"]) / rank if rank else None


def lora_scale_text(results: Mapping[str, TableResult]) -> str:
    """Per task, LoRA's table runs grouped by α/r with how many of them spiked or failed to train: the one
    rate per task was chosen at one α/r, and with α fixed the other ranks take other steps."""
    chosen = {r.task: scale for result in results.values() for r in result.lr_search
              if (scale := lora_scale(r)) is not None}
    scaled = {r.path: (r, scale) for result in results.values() for r in result.records
              if r.status == "ok" and not is_reused(r) and (scale := lora_scale(r)) is not None}
    groups: dict[str, dict[float, list[Record]]] = {}  # task -> α/r -> its runs
    for record, scale in scaled.values():
        groups.setdefault(record.task, {}).setdefault(scale, []).append(record)
    lines = []
    for task, by_scale in sorted(groups.items()):
        if len(by_scale) < 2:
            continue
        counts = " · ".join(f"{scale:g}: {sum(bool(r.loss_spike or r.failed_training) for r in group)} of "
                            f"{len(group)}" for scale, group in sorted(by_scale.items()))
        lines.append(f"- {task}" + (f" (rate chosen at α/r = {chosen[task]:g})" if task in chosen else "")
                     + f": {counts}")
    if not lines:
        return ""
    return ("LoRA keeps one α at every rank, as the paper does (§4.1), so its update BA is scaled by α/r; one\n"
            "learning rate per task need not be the same step at every rank: α/r falls as r grows while BA sums\n"
            "more directions (rsLoRA, Kalajdzievski 2023, arXiv:2312.03732, argues the step stays stable across\n"
            "ranks only at α/√r). LoRA's table runs that trained unstably (a loss spike, or a loss that failed\n"
            "to fall), of all its runs at each α/r:\n\n"
            + "\n".join(lines) + "\n\n")


def baselines_text(results: Mapping[str, TableResult]) -> str:
    lines = dict.fromkeys(line for result in results.values() for line in baseline_lines(result))
    return "\n".join(lines) or "- No finished run to check yet."


# claims reworded since the archive was written: its wording -> today's (Table 5's budget is r × #matrices,
# which fixes the parameter count only where W_k and W_v are as wide as W_q)
REWORDED = {"at an equal budget": "at equal r × #matrices"}


def archived_verdicts(tables_dir: Path) -> dict[str, str]:
    """Claim text (today's wording) -> the verdict a table of the untuned protocol printed (its "Paper's
    claims" rows)."""
    verdicts = {}
    for path in sorted(tables_dir.glob("table_*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := CLAIM_ROW.match(line):
                claim = match["claim"].strip()
                for old, new in REWORDED.items():
                    claim = claim.replace(old, new)
                verdicts[claim] = match["verdict"] + (match["marginal"] or "")
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
    a, b = (pd.json_normalize(r.config).iloc[0].to_dict() for r in (ours, theirs))
    keys = sorted(k for k in set(a) | set(b) if k.startswith(SETUP_PREFIXES) and k not in NOT_SETUP
                  and not same_value(a.get(k), b.get(k)))
    return ", ".join(f"`{k}` {a.get(k)} vs {b.get(k)}" for k in keys) or "nothing"


def pair_text(a: Record, b: Record) -> str:
    return f"seed {a.seed}" if a.seed == b.seed else f"seeds {a.seed} and {b.seed}"


def same_value(x: Any, y: Any) -> bool:
    """Config values compared as the records wrote them: a null and a missing key are the same."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (x, y)]
    return all(missing) or (not any(missing) and x == y)


def seeds_left(expected: Sequence[int], runs: Sequence[Record]) -> str:
    """"; seed 1 not run yet (`make peft-budget`)" for the profile's seeds a setting has no run of."""
    left = sorted(set(expected) - {r.seed for r in runs})
    if not left:
        return ""
    return f"; {'seed' if len(left) == 1 else 'seeds'} {', '.join(map(str, left))} not run yet (`make peft-budget`)"


def reading_text(ours: Sequence[Record], loop: Mapping[Any, Sequence[Record]]) -> str:
    """Where Table 3's LoRA lies against each loop-budget group on the first FIRST_MRS MRs (means over seeds),
    stated only as an ordering of means, and as within seed noise where every gap is below the largest spread
    of two seeds of one of these setups on the same MRs (their own noise there, evaluation set included)."""
    def bleus(runs: Sequence[Record]) -> list[float]:
        return [float(first_mrs_bleu(r)) for r in runs]  # type: ignore[arg-type]

    ours_bleus = bleus(ours)
    groups = {dropout: bleus(runs) for dropout, runs in sorted(loop.items(), key=lambda item: -(item[0] or 0))}
    table = statistics.fmean(ours_bleus)
    means = {dropout: statistics.fmean(scores) for dropout, scores in groups.items()}
    gaps = [table - mean for mean in means.values()]
    order = ("at or above each loop-budget group's mean" if all(g >= 0 for g in gaps)
             else "below each loop-budget group's mean" if all(g < 0 for g in gaps)
             else "between the loop-budget groups' means")
    noise = max((max(b) - min(b) for b in (ours_bleus, *groups.values()) if len(b) > 1), default=None)
    within = (f"; every gap is smaller than the {noise:.1f} BLEU by which two seeds of one of these setups differ "
              "on the same MRs, so within seed noise" if noise is not None and all(abs(g) < noise for g in gaps) else "")
    return (f"- Reading: on the first {FIRST_MRS} MRs Table 3's LoRA ({table:.1f}) lies {order} "
            f"({', '.join(f'dropout {d}: {mean:.1f}' for d, mean in means.items())}){within}.")


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
        expected = table3.expected_seeds if table3 else []
        lines += [f"  - LoRA dropout {dropout}: {both_bleus(runs)}{seeds_left(expected, runs)}."
                  for dropout, runs in sorted(loop.items(), key=lambda item: -(item[0] or 0))]
        if ours:  # a pair of runs of the same dropout and seed where there is one: only the setups differ
            theirs = loop.get(ours[0].method.get("dropout")) or next(iter(loop.values()))
            pair = next(((a, b) for a in ours for b in theirs if a.seed == b.seed), (ours[0], theirs[0]))
            lines.append(f"- What the two setups differ in (Table 3's vs the loop's, from the records of "
                         f"{pair_text(*pair)}): {setup_differences(*pair)}. The first {FIRST_MRS} MRs "
                         "are a slice in file order, not a sample: an ordering of the two setups there need not "
                         "hold on all MRs.")
        spreads = seed_spreads([table3] if table3 else [], "bleu")
        if spreads:
            lines.append("- These are runs, not intervals: two seeds of one Table 3 setting differ by "
                         f"{largest_spread_text(spreads, 'BLEU', ' on all test MRs')}; on 100 MRs a BLEU also "
                         "carries more evaluation-set noise than on all of them, so the reading below measures "
                         "noise by the compared setups' own seeds there.")
        if ours:
            lines.append(reading_text(ours, loop))
    else:
        lines.append("- LoRA at a plain HF-peft loop's budget (`make peft-budget`): not run yet.")
    return "\n".join(lines)


# the columns of the verdicts before and after ("What changed since the untuned protocol" says what changed)
BEFORE, NOW = "Untuned protocol (one rate per method, set by hand)", "Now (rates selected on dev splits)"


def changes_text(results: Mapping[str, TableResult], archive: Path) -> str:
    """Each claim's verdict under the untuned protocol (as its archived table printed it) and now."""
    before = archived_verdicts(archive / "tables")
    if not before:
        return (f"This results folder has no archived tables of the untuned protocol (`{archive.name}/tables/` "
                "under `archive/` beside its runs), so no verdicts to compare: the paragraph above describes the "
                "`mini` study committed under `results/`.")
    rows = []
    for result in results.values():
        for claim in claims.evaluate(result):
            if claim.text in before:
                rows.append({"Table": result.spec.short_title, "Paper's claim": claim.text,
                             BEFORE: before[claim.text], NOW: claim.printed()})
    judged = [(row[BEFORE].split(" (")[0], row[NOW].split(" (")[0]) for row in rows
              if not row[NOW].startswith("—")]  # verdicts without "(marginal)"
    moves = Counter(f"{before} → {now}" for before, now in judged if before != now)
    table = pd.DataFrame(rows).to_markdown(index=False)
    how = "".join(f"; {move}: {count}" for move, count in sorted(moves.items()))
    return (f"{table}\n\nOf the {plural(len(judged), 'claim')} judged under both protocols so far, "
            f"{sum(moves.values())} changed verdict{how}. A claim is listed as judged here only once every cell it "
            "compares has its seeds; its table may already print a verdict on partial evidence.")
