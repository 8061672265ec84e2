"""The paper's qualitative claims per table, checked on our numbers.

Each claim is a comparison between cells of one of our tables, judged on the 95 % interval of the
difference of their means, Δ = mean(A) − mean(B):
- "A beats B": held when the interval lies above 0, not held when it lies below 0, otherwise
  inconclusive.
- "A matches or beats B" (non-inferiority): held when the interval lies above −m, where m is the
  metric's stated equivalence margin (`EQUIVALENCE`: 2 points of accuracy, 1 of BLEU, METEOR or
  ROUGE-L, 0.1 NIST, 0.05 CIDEr); not held when it lies below −m; otherwise inconclusive. So a tie is
  "held" only where the data rule out a loss larger than m: "not shown worse" is not "matches".
- Either is inconclusive when a cell is missing, has fewer than 2 seeds, or holds a run that did not
  learn (it does not beat its task's trivial baseline, `baselines.learning_check`) or barely lowered
  its training loss: a failed fit says nothing of the method.
The interval is Δ ± t·SE with SE² = SE_seeds² + SE_eval² + SE_device²:
- SE_seeds: the seed spread, pooled over the table's cells of the same metric (s_p² = Σ(n_i−1)s_i² /
  Σ(n_i−1); cells whose runs did not learn are left out), SE_seeds = s_p·sqrt(1/n_A + 1/n_B), with
  Σ(n_i−1) degrees of freedom: two seeds per cell give one degree of freedom each, and pooling is what
  makes the spread estimable at all. Pooling assumes the cells share one spread; a cell whose spread is
  far larger (a seed whose loss spiked) would widen every comparison in its column, so Cochran's test
  (ISO 5725-2 §7.3.3, in its F form, at the 1 % level, repeated) sets such a cell apart: the pool is
  made without it, and a comparison that involves it combines its own spread (n−1 df) with the pool's
  for the other cell by Welch–Satterthwaite. Without a pool (a cell outside any group), Welch's
  per-cell form.
- SE_eval: the error from the finite evaluation set, which more seeds do not shrink (every seed is
  scored on the same examples). Accuracies: paired over the examples, from the per-example
  differences d_i of the two cells (each averaged over its seeds, from the saved predictions),
  SE_eval² = (var(d) − Σ_cells mean_i(s_i²)/n) / N, where s_i² is example i's variance over a cell's
  n seeds: the seed noise in var(d), which SE_seeds already counts; where predictions are missing,
  the unpaired binomial bound. E2E's corpus metrics: a paired bootstrap over the MRs
  (`peftrepro.report.resampling`: 1,000 seeded resamples, both cells on the same ones), the variance of
  the difference over resamples less, per cell, the mean over resamples of its seeds' variance / n.
- SE_device: where the two cells ran on two kinds of device (fp32 on a CPU, bf16 autocast on a GPU) in
  different shares, an offset δ between the kinds makes (share_A − share_B)·δ of mean(A) − mean(B). The
  same runs on both kinds (`report.devices`: k pairs of one configuration and seed) estimate δ by their
  mean gap; Δ is corrected by (share_A − share_B) × that mean, and SE_device = |share_A − share_B| ×
  the mean's standard error, with k − 1 degrees of freedom (the run-to-run noise within each gap is what
  that error measures). Assumed: one δ per metric for every setup of a table (the pairs are whatever
  was rerun); a cell whose runs ran on both kinds keeps part of δ in its seed spread, and a pair's run
  may be one of a compared cell's, correlations left out. With fewer than two pairs on the metric, or
  runs of more than two kinds, the term is "not estimated" and the evidence says so.
- t: Student's t quantile for a two-sided 95 % interval, its degrees of freedom from the
  Welch–Satterthwaite rule over the seed and device terms (the evaluation-set term counts as known
  exactly); 1.96 with neither.
A claim over several comparisons is not held if any is not held, else inconclusive if any is
inconclusive, else held. Cells marked n/a (method not applicable to the model, or a cell the table does not
measure by design) are left out.
A verdict decided by less than MARGINAL of its interval's half-width is marked marginal: one more
seed may flip it, which the verdict word alone would not say.
A claim that is not held also says why that may be at this scale, and how the compared cells
trained (trainable parameters, learning rate, steps, final training loss, from their records).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

from scipy import stats as scipy_stats

from peftrepro.report.intervals import CONFIDENCE_TEXT, quantile
from peftrepro.report.records import PROPORTION_METRICS, trainable_counts, training_text
from peftrepro.report.specs import GPT3_TASK_NAMES, LARGEST_PRUNED, RANK_WEIGHTS

if TYPE_CHECKING:
    from peftrepro.report.cells import Resampled, TableResult
    from peftrepro.report.devices import DeviceGap
    from peftrepro.report.records import ExampleScores

# Cochran's test for one outlying spread among a pool's cells; 1 % is ISO 5725-2's level for an
# outlier (5 % only marks a "straggler", which it keeps in the pool).
OUTLYING_SPREAD_LEVEL = 0.01
MARGINAL = 0.1  # a verdict this close to its line, as a fraction of the interval's half-width, is marginal
MAX_SHOWN = 3  # comparisons quoted as evidence of a verdict (the rest are counted)
HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
# The difference (in the paper's printed units) within which two cells "match": stated before the
# runs, about the spread of the paper's own cells (Tables 3 and 4 differ by 1-3 points).
EQUIVALENCE = {"accuracy": 2.0, "bleu": 1.0, "meteor": 1.0, "rouge_l": 1.0, "nist": 0.1, "cider": 0.05}


def equivalence_margin(metric: str) -> float:
    """The metric's stated margin; every accuracy (MultiNLI's, WikiSQL's) shares one."""
    if metric in EQUIVALENCE:
        return EQUIVALENCE[metric]
    if metric in PROPORTION_METRICS:
        return EQUIVALENCE["accuracy"]
    raise ValueError(f"no equivalence margin is stated for metric {metric!r}: add one to "
                     "peftrepro.report.claims.EQUIVALENCE before judging a claim on it")


@dataclass(frozen=True)
class Pool:
    """The seed spread pooled over a table's cells of one metric, less those whose spread is outlying."""

    sd: float
    df: int
    cells: int
    set_apart: frozenset[int] = frozenset()  # positions (in the cells pooled) of those Cochran's test set apart

    @classmethod
    def of(cls, cells: Sequence[Cell]) -> Pool | None:
        spread = [i for i, c in enumerate(cells) if c.n > 1 and not math.isnan(c.std) and not c.failed_fit]
        kept, set_apart = list(spread), set()
        while (outlier := outlying_spread([cells[i] for i in kept])) is not None:
            set_apart.add(kept.pop(outlier))
        variance, df = pooled_variance([cells[i] for i in kept])
        if not df:
            return None
        return cls(math.sqrt(variance), df, len(kept), frozenset(set_apart))


def pooled_variance(cells: Sequence[Cell]) -> tuple[float, int]:
    """(s_p² = Σ(n_i−1)s_i² / Σ(n_i−1), its degrees of freedom Σ(n_i−1)); (nan, 0) without any."""
    df = sum(c.n - 1 for c in cells)
    return (sum((c.n - 1) * c.std ** 2 for c in cells) / df if df else math.nan), df


def outlying_spread(cells: Sequence[Cell]) -> int | None:
    """The position of the cell whose seed spread Cochran's test finds outlying among `cells`, if any.

    The F form of Cochran's C, which also serves cells of unequal n: each cell's variance against the
    pool of the others, F_j = s_j² / s_others², the most extreme (smallest upper-tail p under
    F(n_j − 1, Σ_others(n_i − 1))) outlying when p < OUTLYING_SPREAD_LEVEL / k. For equal n it is exactly
    C > 1 / (1 + (k − 1) / F_crit). At least three cells are needed (with two, either could be the odd
    one), and a spread is never outlying against others that have none.
    """
    if len(cells) < 3:
        return None
    p_values = []
    for j, cell in enumerate(cells):
        others_var, others_df = pooled_variance([c for i, c in enumerate(cells) if i != j])
        p_values.append(float(scipy_stats.f.sf(cell.std ** 2 / others_var, cell.n - 1, others_df))
                        if others_var > 0 else 1.0)
    extreme = min(range(len(cells)), key=p_values.__getitem__)
    return extreme if p_values[extreme] < OUTLYING_SPREAD_LEVEL / len(cells) else None


@dataclass(frozen=True)
class Cell:
    label: str
    mean: float
    std: float
    n: int
    status: str
    sampling_se: float = 0.0  # binomial error of the mean from the evaluation set (0: not estimated)
    examples: ExampleScores | None = None  # per-example scores, mean over seeds (accuracies only)
    training: str = ""  # how its runs trained (records.training_text), quoted when a claim fails
    failed_training: str = ""  # runs whose training loss did not fall (records.Record.failed_training)
    metric: str = ""
    # one entry per run that does not beat the task's trivial baseline (baselines.learning_check)
    did_not_learn: tuple[str, ...] = ()
    resampled: Resampled | None = None  # E2E: the cell's score on each bootstrap resample of its MRs
    pool: Pool | None = None  # the seed spread pooled over its table's cells of the same metric
    own_spread: bool = False  # set apart from the pool (an outlying spread): judged on its own spread
    hardware: tuple[str, ...] = ()  # where and in which precision its runs ran (records.Record.hardware)
    devices: tuple[str, ...] = ()  # each run's kind of device (records.Record.device_kind): its numerics
    device_gaps: tuple[DeviceGap, ...] = ()  # the offsets between kinds of device its table's profile measured

    @property
    def failed_fit(self) -> str:
        return "; ".join(self.did_not_learn) or self.failed_training

    def __str__(self) -> str:
        if self.n == 0:
            return f"{self.label} —"
        spread = f" ± {self.std:.2f}" if self.n > 1 else ""
        return f"{self.label} {self.mean:.2f}{spread} (n={self.n})"


def pooled(cells: dict[str, Cell]) -> dict[str, Cell]:
    """The cells with their pooled seed spread attached (one pool for all of them)."""
    pool = Pool.of(list(cells.values()))
    return {key: replace(cell, pool=pool, own_spread=pool is not None and i in pool.set_apart)
            for i, (key, cell) in enumerate(cells.items())}


@dataclass(frozen=True)
class Difference:
    delta: float    # mean(A) − mean(B), less what a measured device offset makes of it (device_how says)
    seed_se: float  # SE from the seed spread alone
    seed_df: float  # its degrees of freedom
    eval_se: float  # SE from the evaluation set alone (0: not estimated)
    seed_how: str = ""  # how each was estimated
    eval_how: str = ""
    device_se: float = 0.0  # the error of the device offset Δ was corrected by (0: none, or not estimated)
    device_df: float = math.inf
    device_how: str = ""  # "": both cells ran on one kind of device in the same shares

    @property
    def se(self) -> float:
        return math.sqrt(self.seed_se ** 2 + self.eval_se ** 2 + self.device_se ** 2)

    @property
    def df(self) -> float:
        """Welch–Satterthwaite, the evaluation-set term taken as known (infinite degrees of freedom)."""
        estimated = [(se, df) for se, df in ((self.seed_se, self.seed_df), (self.device_se, self.device_df))
                     if se and not math.isinf(df)]
        if not estimated:
            return math.inf
        return self.se ** 4 / sum(se ** 4 / df for se, df in estimated)

    @property
    def half_width(self) -> float:
        """Half-width of the 95 % interval of the difference."""
        return quantile(self.df) * self.se

    def __str__(self) -> str:
        df = "∞" if math.isinf(self.df) else f"{self.df:.1f}"  # fractional (Welch–Satterthwaite): the quantile used
        device = f"; device offset {self.device_se:.2f}" if self.device_se else "; device offset" if self.device_how else ""
        return (f"Δ = {self.delta:+.2f} ± {self.half_width:.2f} ({CONFIDENCE_TEXT}, t with {df} df; SE: seeds {self.seed_se:.2f}"
                f"{self.seed_how}, eval set {self.eval_se:.2f}{self.eval_how}{device}{self.device_how})")


@dataclass(frozen=True)
class Comparison:
    verdict: str
    evidence: str
    slack: float = math.inf  # held or not held: how far the interval is from flipping the verdict
    cells: tuple[Cell, ...] = ()
    half_width: float = math.inf  # of the interval
    # how far the interval's lower end lies above the line the claim must clear (negative: below it);
    # inf where no judgement was possible (no result, one seed, a cell that did not learn or failed to train)
    room: float = math.inf

    @property
    def marginal(self) -> bool:
        """Held or not held, but within MARGINAL of the line."""
        return self.slack < MARGINAL * self.half_width


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    verdict: str
    evidence: str
    # not held (or inconclusive as a cell did not learn, where the claim explains that): why that may be at
    # this scale, with how the compared cells trained
    why: str = ""
    marginal: bool = False  # every comparison deciding the verdict is marginal
    # what some compared cell still lacks, in any comparison (the evidence quotes only those deciding
    # the verdict): "no result" or "one seed"; "" once every cell has its seeds
    waiting: str = ""

    @property
    def pending(self) -> str:
        """Why an inconclusive claim has no verdict yet (a compared cell still waits for runs), else ""."""
        if self.verdict != INCONCLUSIVE:
            return ""
        return {"no result": "not all its cells have run yet", "one seed": "one seed: no spread"}.get(self.waiting, "")

    def printed(self, bold: bool = False) -> str:
        """The verdict as pages print it, "—" with the reason while it waits for runs."""
        if self.pending:
            return f"— ({self.pending})"
        return (f"**{self.verdict}**" if bold else self.verdict) + " (marginal)" * self.marginal


def waiting(evaluated: Sequence[Claim]) -> tuple[int, str]:
    """How many of the claims still wait for runs (Claim.pending), and the verb that agrees: (1, "waits")."""
    n = sum(bool(claim.pending) for claim in evaluated)
    return n, "waits" if n == 1 else "wait"


def _seed_error(a: Cell, b: Cell) -> tuple[float, float, str]:
    """(SE, degrees of freedom, how) of mean(A) − mean(B) from the seed spread."""
    pool = a.pool if a.pool is not None and a.pool == b.pool else None
    if pool is not None and not (a.own_spread or b.own_spread):
        return pool.sd * math.sqrt(1 / a.n + 1 / b.n), pool.df, f" pooled over {pool.cells} cells"
    # Welch–Satterthwaite over independent variance estimates: a cell's own spread (n − 1 df), or the
    # pool's, which leaves out the cells set apart
    terms = [(c.std ** 2 / c.n, c.n - 1) if pool is None or c.own_spread else (pool.sd ** 2 / c.n, pool.df)
             for c in (a, b)]
    variance = sum(v for v, _ in terms)
    if variance == 0:
        return 0.0, math.inf, ""
    apart = [c.label for c in (a, b) if pool is not None and c.own_spread]
    how = (f" (Welch: {' and '.join(apart)} set apart from the pool by Cochran's test)" if apart
           else " (Welch)")
    return math.sqrt(variance), variance ** 2 / sum(v ** 2 / df for v, df in terms), how


def _eval_error(a: Cell, b: Cell) -> tuple[float, str]:
    """The SE of mean(A) − mean(B) from the finite evaluation set, and how it was estimated."""
    # Both spreads below are of seed means, so they also hold each example's (MR's) seed noise, which the
    # seed term already counts: it is taken out (`seed_noise`), leaving what more seeds do not shrink.
    if a.resampled is not None and b.resampled is not None and a.resampled.fingerprint == b.resampled.fingerprint:
        differences = a.resampled.values - b.resampled.values
        variance, note = _less_seed_noise(float(differences.var(ddof=1)), a.resampled.seed_noise + b.resampled.seed_noise)
        return math.sqrt(variance), f" paired bootstrap over MRs ({len(differences)} resamples{note})"
    if a.examples and b.examples and a.examples.fingerprint == b.examples.fingerprint:
        diffs = [x - y for x, y in zip(a.examples.scores, b.examples.scores)]
        variance, note = _less_seed_noise(statistics.variance(diffs), a.examples.seed_noise + b.examples.seed_noise)
        return math.sqrt(variance / len(diffs)), f" paired over {len(diffs)} examples{note}"
    if a.sampling_se or b.sampling_se:
        return math.hypot(a.sampling_se, b.sampling_se), " unpaired"
    return 0.0, " not estimated"


def _less_seed_noise(variance: float, seed_noise: float) -> tuple[float, str]:
    """The variance left once the seeds' share is taken out, at least 0 (a moment estimate can fall below)."""
    left = variance - seed_noise
    note = ("; the paired spread is no larger than the seeds' own noise in it, so 0: the seed term counts that noise"
            if left <= 0 < seed_noise else "")
    return max(left, 0.0), note


def _device_error(a: Cell, b: Cell) -> tuple[float, float, float, str]:
    """(shift, SE, degrees of freedom, how): the part of mean(A) − mean(B) the offset between two kinds of
    device makes, as the same runs on both measure it, and that measure's error; how is "" where the cells
    ran on the kinds in the same shares (an offset cancels)."""
    if not (a.devices and b.devices):
        return 0.0, 0.0, math.inf, ""
    kinds = tuple(sorted(set(a.devices) | set(b.devices)))
    weights = [a.devices.count(kind) / len(a.devices) - b.devices.count(kind) / len(b.devices) for kind in kinds]
    if not any(weights):
        return 0.0, 0.0, math.inf, ""
    if len(kinds) > 2:
        return 0.0, 0.0, math.inf, f" not estimated (runs of {len(kinds)} kinds of device: {', '.join(kinds)})"
    gap = next((g for g in a.device_gaps if g.kinds == kinds and g.metric == a.metric and len(g.gaps) > 1), None)
    if gap is None:
        return 0.0, 0.0, math.inf, f" not estimated (no two runs of this metric rerun on {' and '.join(kinds)})"
    weight = weights[0]  # the difference in the first kind's share; a gap is the first kind's − the second's
    return (weight * gap.mean, abs(weight) * gap.mean_se, len(gap.gaps) - 1,
            f" (Δ corrected by {-weight * gap.mean:+.2f}: {weight:+.2f} × the {kinds[0]} − {kinds[1]} offset "
            f"{gap.mean:+.2f}, the mean gap of {len(gap.gaps)} device pairs)")


def _difference(a: Cell, b: Cell) -> Difference | str:
    """The difference of means with its errors, or why no judgement is possible."""
    for cell in (a, b):  # a missing cell first: it says more of what is left than the other's one seed
        if cell.n == 0:
            return f"{cell.label} has no result"
    failures: list[str] = []  # both cells' where both failed: naming one would leave the other read as a result
    for cell in (a, b):
        if cell.n < 2 and not failures:
            return f"{cell.label} has one seed, so no spread"
        if cell.n >= 2 and (why := _failure(cell)):
            failures.append(why)
    if failures:
        return "; ".join(failures)
    seed_se, seed_df, seed_how = _seed_error(a, b)
    eval_se, eval_how = _eval_error(a, b)
    shift, device_se, device_df, device_how = _device_error(a, b)
    return Difference(a.mean - b.mean - shift, seed_se, seed_df, eval_se, seed_how, eval_how, device_se, device_df,
                      device_how)


def _failure(cell: Cell) -> str:
    """Why a cell's score says nothing of its method: it did not learn, or its training failed ("" if neither)."""
    if failed := len(cell.did_not_learn):
        which = "" if failed == cell.n else f" in {failed} of its {cell.n} seeds"
        return (f"{cell.label} did not learn{which} ({'; '.join(cell.did_not_learn)}), so its "
                f"{'mean over seeds' if which else 'score'} says nothing of the method")
    if cell.failed_training:
        return f"{cell.label}'s training failed ({cell.failed_training}), so its score says nothing of the method"
    return ""


def _evidence(a: Cell, b: Cell, diff: Difference | str, margin: str = "") -> str:
    text = f"{a} vs {b}: {diff}{margin}"
    if a.hardware and b.hardware and a.hardware != b.hardware:  # e.g. fp32 on a CPU against bf16 on a GPU
        text += f" [{a.label} ran on {' and '.join(a.hardware)}, {b.label} on {' and '.join(b.hardware)}]"
    return text


def beats(a: Cell, b: Cell) -> Comparison:
    diff = _difference(a, b)
    if isinstance(diff, str):
        return Comparison(INCONCLUSIVE, _evidence(a, b, diff), cells=(a, b))
    low, high = diff.delta - diff.half_width, diff.delta + diff.half_width
    verdict = HELD if low > 0 else NOT_HELD if high < 0 else INCONCLUSIVE
    slack = {HELD: low, NOT_HELD: -high}.get(verdict, math.inf)
    return Comparison(verdict, _evidence(a, b, diff), slack, (a, b), diff.half_width, low)


def matches_or_beats(a: Cell, b: Cell) -> Comparison:
    """Non-inferiority: A is at most the metric's equivalence margin below B."""
    diff = _difference(a, b)
    if isinstance(diff, str):
        return Comparison(INCONCLUSIVE, _evidence(a, b, diff), cells=(a, b))
    m = equivalence_margin(a.metric)
    low, high = diff.delta - diff.half_width, diff.delta + diff.half_width
    verdict = HELD if low > -m else NOT_HELD if high < -m else INCONCLUSIVE
    slack = {HELD: low + m, NOT_HELD: -m - high}.get(verdict, math.inf)
    return Comparison(verdict, _evidence(a, b, diff, f" (equivalence margin {m:g})"), slack, (a, b), diff.half_width, low + m)


# Why a claim may fail at a small scale (quoted only under a claim that is not held, followed by
# how the compared cells trained, read from their records). Specific reasons per claim are below.
_SMALL_SCALE = ("here a small quantised model trains one short schedule on a subset, at a learning rate per "
                "method chosen on a dev split from a small grid, so either side may still be under- or over-fitted.")
SCALE_WHY = f"The paper's claim is made on a far larger model (GPT-3 175B) trained on the full data; {_SMALL_SCALE}"
SCALE_WHY_E2E = f"The paper's claim is made on GPT-2 M and L trained on the full E2E data; {_SMALL_SCALE}"
WHY_FEWER_MATRICES = ("The paper (§7.1) finds it better to spread a small budget over more weight "
                      "matrices on GPT-3 175B; a small model may instead need a higher rank on fewer "
                      "matrices.")
WHY_LOW_RANK = ("The paper (§7.2) argues that the update has a very low intrinsic rank on GPT-3 175B; "
                "a small model may need more directions. α is fixed across r, so the scale α/r also "
                "changes with r.")
# Which part of LoRA's update limits it (its rank, or the matrices it adapts) is what Tables 5 and 6
# measure, so the reason points there rather than guessing.
_LARGER_UPDATE = ("a small model on a short schedule may need a larger update than LoRA's, low-rank and on "
                  "W_q and W_v only, which full fine-tuning is free to make (compare the final training "
                  "losses); on WikiSQL and MultiNLI, Tables 5 and 6 show whether adapting more matrices or "
                  "raising the rank narrows the gap.")
WHY_FT = ("The paper's parity with full fine-tuning is on GPT-3 175B (and RoBERTa/DeBERTa with tuned "
          f"learning rates); {_LARGER_UPDATE}")
# Table 3 is GPT-2, not GPT-3, and its FT row is not the paper's own run.
WHY_FT_E2E = ("On E2E the paper's LoRA edges out full fine-tuning on GPT-2 M/L trained on the full data, "
              f"against an FT row it cites from Li & Liang (2021); {_LARGER_UPDATE}")


def combine(text: str, source: str, comparisons: Sequence[Comparison], why: str = SCALE_WHY,
            why_unlearned: Callable[[Sequence[Cell]], str] | None = None) -> Claim:
    """One verdict from several comparisons; the evidence shows the comparisons that decide it.
    A claim that is not held also says why that may be (`why`) and how the deciding cells trained; one left
    inconclusive by cells that did not learn (every cell with its seeds) does so where `why_unlearned`,
    given those cells, names a reason."""
    if not comparisons:
        return Claim(text, source, INCONCLUSIVE, "no comparable cells")
    compared = [cell for c in comparisons for cell in c.cells]
    # what a compared cell still waits for: a first run, or the profile's other seeds (a cell whose runs
    # failed waits for nothing, and one seed is all a one-seed profile runs)
    waiting = ("no result" if any(cell.n == 0 and cell.status in ("missing", "unscored") for cell in compared)
               else "one seed" if any(cell.n == 1 and cell.status == "partial" for cell in compared) else "")
    verdicts = {c.verdict for c in comparisons}
    verdict = NOT_HELD if NOT_HELD in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else HELD
    deciding = [c for c in comparisons if c.verdict == verdict]
    # held: the comparison closest to flipping; not held: the clearest failures; inconclusive: those
    # furthest from holding, then those that could not be judged (`waiting` names what they lack)
    if verdict == HELD:
        shown = [min(deciding, key=lambda c: c.slack)]
    else:
        shown = sorted(deciding, key=lambda c: -c.slack if verdict == NOT_HELD else c.room)[:MAX_SHOWN]
    evidence = "; ".join(c.evidence for c in shown)
    if len(comparisons) > len(shown):
        which = {HELD: "the closest to failing", NOT_HELD: "the clearest failures",
                 INCONCLUSIVE: "those furthest from holding"}[verdict]
        tally = Counter(c.verdict for c in comparisons)
        of_all = ", ".join(f"{tally[v]} {v}" for v in (HELD, NOT_HELD, INCONCLUSIVE) if tally[v])
        evidence += f" (shown: {len(shown)} of {len(comparisons)} comparisons, {which}; all {len(comparisons)}: {of_all})"
    # held rests on its weakest comparison (shown); not held on its strongest (any of the deciding)
    marginal = shown[0].marginal if verdict == HELD else verdict == NOT_HELD and all(c.marginal for c in deciding)
    shown_cells = [cell for c in shown for cell in c.cells]
    reason = why if verdict == NOT_HELD else ""
    if verdict == INCONCLUSIVE:
        # with every shown cell at 2+ seeds, a failed fit is what stopped the comparison (`_difference`)
        failed = [cell for cell in shown_cells if cell.did_not_learn]
        reason = (why_unlearned(failed) if why_unlearned and failed and not waiting
                  and all(cell.n > 1 for cell in shown_cells) else "")
    if not reason:
        return Claim(text, source, verdict, evidence, marginal=marginal, waiting=waiting)
    cells = {cell.label: cell for cell in shown_cells}  # each cell once, in order
    trained = "; ".join(f"{label}: {cell.training}" for label, cell in cells.items())
    return Claim(text, source, verdict, evidence, f"{reason} As trained here: {trained}.", marginal, waiting)


def _cell(result: TableResult, row: str, column: str, label: str) -> Cell:
    stats = result.stats(row, column)
    sampling_se = float(stats["sampling_se"])
    records = result.cell_records(row, column)
    failed = "; ".join(f"seed {r.seed}: {r.failed_training}" for r in records if r.failed_training)
    return Cell(label, float(stats["mean"]), float(stats["std"]) if stats["n"] > 1 else math.nan,
                int(stats["n"]), str(stats["status"]), 0.0 if math.isnan(sampling_se) else sampling_se,
                stats["examples"], training_text(records), failed, str(stats["metric"] or ""),
                tuple(stats["did_not_learn"]), stats["resampled"],
                hardware=tuple(sorted({r.hardware for r in records})),
                devices=tuple(sorted(r.device_kind for r in records)), device_gaps=result.device_gaps)


def _cells(result: TableResult, keys: Sequence[tuple[str, str, str]]) -> dict[str, Cell]:
    """Cells (row, column, label) of one metric, keyed by label, sharing their pooled seed spread."""
    return pooled({label: _cell(result, row, column, label) for row, column, label in keys})


def _weight_type_claims(result: TableResult) -> list[Claim]:
    columns = [axis.key for axis in result.spec.columns]
    claims = []
    for task, name in GPT3_TASK_NAMES.items():
        cells = _cells(result, [(task, column, column) for column in columns])
        qv, q, k, four = cells["W_q,W_v"], cells["W_q"], cells["W_k"], cells["W_q,W_k,W_v,W_o"]
        others = [cells[c] for c in columns if c != "W_q,W_k,W_v,W_o"]
        claims += [
            _noting_unequal_counts(combine(f"{name}: adapting W_q,W_v (r=4) beats W_q alone (r=8) at equal r × #matrices",
                                 "§7.1, Table 5", [beats(qv, q)], WHY_FEWER_MATRICES), result, task, ("W_q,W_v", "W_q")),
            _noting_unequal_counts(combine(f"{name}: adapting W_q,W_v (r=4) beats W_k alone (r=8) at equal r × #matrices",
                                 "§7.1, Table 5", [beats(qv, k)], WHY_FEWER_MATRICES), result, task, ("W_q,W_v", "W_k")),
            combine(f"{name}: all four (W_q,W_k,W_v,W_o at r=2) is best or tied",
                    "Table 5", [matches_or_beats(four, other) for other in others if other.status != "n/a"]),
        ]
    return claims


def _noting_unequal_counts(claim: Claim, result: TableResult, task: str, columns: tuple[str, str]) -> Claim:
    """Where two columns of equal r × #matrices train different counts (grouped-query attention narrows
    W_k and W_v), the evidence says so: the paper's GPT-3 columns were equal in both."""
    counts = [trainable_counts(result.cell_records(task, c)) for c in columns]
    if not all(counts) or counts[0] == counts[1]:
        return claim
    trained = " vs ".join(f"{c} {'/'.join(n)}" for c, n in zip(columns, counts))
    return replace(claim, evidence=f"{claim.evidence} [trainable parameters differ: {trained}]")


def _rank_claims(result: TableResult) -> list[Claim]:
    ranks = [axis.key for axis in result.spec.columns]
    claims = []
    for task, name in GPT3_TASK_NAMES.items():
        cells = _cells(result, [(f"{task}|{weights}", r, f"{weights} {r}") for weights in RANK_WEIGHTS for r in ranks])
        cell = lambda weights, r, cells=cells: cells[f"{weights} {r}"]  # noqa: E731
        qv_r1 = cell("W_q,W_v", "r=1")
        claims += [
            combine(f"{name}: r=1 is already competitive for W_q,W_v (matches or beats every larger r)",
                    "§7.2, Table 6", [matches_or_beats(qv_r1, cell("W_q,W_v", r)) for r in ranks if r != "r=1"],
                    WHY_LOW_RANK),
            combine(f"{name}: at r=1, W_q,W_v beats W_q alone (small r suffices more for W_q,W_v)",
                    "§7.2, Table 6", [beats(qv_r1, cell("W_q", "r=1"))], WHY_LOW_RANK),
            combine(f"{name}: a larger rank does not help: r=8 matches or beats r=64 for every weight type",
                    "§7.2, Table 6", [matches_or_beats(cell(w, "r=8"), cell(w, "r=64"))
                                      for w in RANK_WEIGHTS], WHY_LOW_RANK),
        ]
    return claims


def _arm_cells(result: TableResult, column: str) -> dict[str, Cell]:
    """The cells of one metric column (Tables 3 and 4), keyed by arm, sharing their pooled spread."""
    labels = {axis.key: axis.labels[0] for axis in result.spec.rows}
    cells = _cells(result, [(key, column, label) for key, label in labels.items()])
    return {key: cells[label] for key, label in labels.items()}


def _e2e_claims(result: TableResult) -> list[Claim]:
    bleu = _arm_cells(result, "bleu")
    peft = [cell for key, cell in bleu.items() if key not in ("lora", "ft") and cell.status != "n/a"]
    all_metrics = [matches_or_beats(cells["lora"], cell)
                   for metric in ("bleu", "nist", "meteor", "rouge_l", "cider")
                   for cells in [_arm_cells(result, metric)]
                   for key, cell in cells.items() if key != "lora" and cell.status != "n/a"]
    return [
        combine("LoRA matches or beats every other parameter-efficient method on BLEU",
                "§5.4, Table 3", [matches_or_beats(bleu["lora"], cell) for cell in peft], SCALE_WHY_E2E),
        combine("LoRA matches or beats full fine-tuning on BLEU", "§5.4, Table 3",
                [matches_or_beats(bleu["lora"], bleu["ft"])], WHY_FT_E2E),
        combine("LoRA matches or beats every other method on all five metrics", "Table 3", all_metrics, SCALE_WHY_E2E),
    ]


def _methods_claims(result: TableResult) -> list[Claim]:
    claims = []
    for task, name in GPT3_TASK_NAMES.items():
        cells = _arm_cells(result, task)
        lora = cells["lora_r8"]
        others = [cell for key, cell in cells.items()
                  if key not in ("ft", "lora_r1", "lora_r8") and cell.status != "n/a"]
        claims += [
            combine(f"{name}: LoRA (r_q=r_v=8) matches or beats full fine-tuning", "§5.5, Table 4",
                    [matches_or_beats(lora, cells["ft"])], WHY_FT),
            combine(f"{name}: LoRA (r_q=r_v=8) matches or beats every other adaptation method "
                    "(BitFit, PreEmbed, PreLayer, Adapter^H)", "§5.5, Table 4",
                    [matches_or_beats(lora, cell) for cell in others]),
            combine(f"{name}: LoRA at r_q=r_v=1 matches or beats Adapter^H at r=1 (a similar budget)",
                    "Table 15", [matches_or_beats(cells["lora_r1"], cells["adapter_h_r1"])]),
        ]
    return claims


WHY_QLORA = ("QLoRA's parity is shown on RoBERTa-large, T5 (80M-11B) and LLaMA (7B-65B) trained to convergence, "
             "with LoRA on every linear layer of the blocks; here a 135M model whose weights already sat on a "
             "4-bit grid (GGUF) is re-quantised, with LoRA on W_q and W_v only and one short schedule, so the "
             "quantisation error is a larger share of what LoRA has to absorb.")
WHY_PRUNING = ("Sanh et al. prune BERT-base over 6-10 epochs of MNLI's 393K pairs; here a 135M decoder scored by "
               "label likelihood sees 4,000 examples once (a few hundred steps), so a pruned model has little time "
               "to recover what its masks removed.")
# what docs/paper-reference.md §13 measured of movement's masks on SmolLM2; said of a movement cell that did not
# learn while its masks removed some of those weights (the table's column), and magnitude's cell learned
WHY_MOVEMENT = (f"{WHY_PRUNING} Movement's Adam-trained scores rank weights without regard to their size, so "
                "its masks removed some of the matrices' few very large weights (the column \"Largest 0.1 % of "
                "weights pruned\"; at 80 % remaining about as many as a random mask, docs/paper-reference.md §13), "
                "and in the rate selection's runs the loss rose far above its start while pruning; magnitude "
                "pruning never removes those weights.")
# a movement cell that pruned this share (%) of its largest weights or more is said to have removed some
OUTLIERS_PRUNED = 1.0


def _qlora_claims(result: TableResult) -> list[Claim]:
    claims = []
    for task, name in (("e2e", "E2E (BLEU)"), ("mnli", "MultiNLI")):
        cells = _arm_cells(result, task)
        claims += [
            combine(f"{name}: QLoRA NF4 + DQ matches or beats LoRA on the full-precision base", "QLoRA §4, Tables 3, 4",
                    [matches_or_beats(cells["nf4_dq"], cells["lora"])], WHY_QLORA),
            combine(f"{name}: NF4 beats FP4 (both without double quantisation)", "QLoRA §4, Table 2, Figure 3",
                    [beats(cells["nf4"], cells["fp4"])], WHY_QLORA),
            combine(f"{name}: double quantisation does not degrade NF4 (NF4 + DQ matches or beats NF4)",
                    "QLoRA §4 (summary)", [matches_or_beats(cells["nf4_dq"], cells["nf4"])], WHY_QLORA),
        ]
    return claims


def _pruning_claims(result: TableResult) -> list[Claim]:
    cells = _arm_cells(result, "mnli")

    def unlearned(failed: Sequence[Cell]) -> str:
        """Why pruned cells may not learn: movement's masks where only movement failed, its masks having
        removed some of the largest weights; the budget where a pruned cell failed; no reason for a dense row."""
        rows = [row for row, cell in cells.items() if any(cell is f for f in failed)]
        if not rows or not all(row.startswith(("magnitude_", "movement_")) for row in rows):
            return ""
        if all(row.startswith("movement_") and _largest_pruned(result, row) >= OUTLIERS_PRUNED for row in rows):
            return WHY_MOVEMENT
        return WHY_PRUNING

    return [
        *(combine(f"Movement pruning beats magnitude pruning at {percent} % remaining weights",
                  "Sanh et al. §6, Table 2", [beats(cells[f"movement_{percent}"], cells[f"magnitude_{percent}"])],
                  WHY_MOVEMENT, unlearned) for percent in (10, 3)),
        # not held here means movement beat magnitude: the budget, not movement's masks, is the reason to give
        combine("At low sparsity (80 % remaining) magnitude pruning matches or beats movement pruning",
                "Sanh et al. §6, Figure 2", [matches_or_beats(cells["magnitude_80"], cells["movement_80"])],
                WHY_PRUNING, unlearned),
        combine("At low sparsity (80 % remaining) magnitude pruning matches dense fine-tuning (little or no loss; "
                "against the dense row with the same trainable weights and rate, all but the blocks frozen)",
                "Sanh et al. §6, Figure 2", [matches_or_beats(cells["magnitude_80"], cells["dense_blocks"])],
                WHY_PRUNING, unlearned),
    ]


def _largest_pruned(result: TableResult, row: str) -> float:
    """A pruned row's mean share (%) of its largest weights its masks removed; 0 where not measured."""
    stats = result.stats(row, LARGEST_PRUNED)
    return float(stats["mean"]) if stats["n"] else 0.0


CLAIMS: dict[str, Callable[[TableResult], list[Claim]]] = {
    "table_weight_type": _weight_type_claims,
    "table_rank": _rank_claims,
    "table_e2e": _e2e_claims,
    "table_methods": _methods_claims,
    "table_qlora": _qlora_claims,
    "table_pruning": _pruning_claims,
}


def evaluate(result: TableResult) -> list[Claim]:
    """The paper's claims for this table, each with a verdict on our numbers."""
    return CLAIMS[result.spec.name](result)


def render(claims: Sequence[Claim], with_rule: bool = True) -> list[str]:
    """Markdown lines: one table row per claim, why those not held (or not judged, a cell not learning) may be
    so at this scale (once per reason), then the decision rule (`with_rule`: a page that states it once leaves it out)."""
    lines = ["| Paper's claim | Where | On our numbers | Evidence (mean ± std (n); Δ ± the "
             f"{CONFIDENCE_TEXT} interval's half-width) |",
             "|---|---|---|---|"]
    lines += [f"| {c.text} | {c.source} | {c.printed(bold=True)} | {c.evidence} |" for c in claims]
    reasons: dict[tuple[str, str], list[str]] = {}  # two claims on the same cells share their reason
    for claim in claims:
        if claim.why:
            kind = "Not held" if claim.verdict == NOT_HELD else "Inconclusive, as a compared cell did not learn"
            reasons.setdefault((kind, claim.why), []).append(claim.text)
    if reasons:
        lines += ["", *(f"- {kind}: {'; '.join(texts)}. {why}" for (kind, why), texts in reasons.items())]
    return lines + (["", *rule_lines()] if with_rule else [])


def rule_lines() -> list[str]:
    """How a claim is judged: the interval, then the verdict rule (two paragraphs)."""
    return [f"Interval: {CONFIDENCE_TEXT} on the difference of two cells' means, Student's t with Welch–Satterthwaite degrees "
            "of freedom (the seed and device terms', the evaluation set's error taken as known); SE² = the seed spread "
            "pooled over the table's cells of that metric × (1/n_A + 1/n_B) + the evaluation set's error, paired "
            "(per example for accuracies, a bootstrap over MRs for E2E; the evidence says \"not estimated\" where "
            "the saved predictions do not allow it), less the seeds' own noise in it, which the seed term counts. "
            "A cell whose seed spread Cochran's test (1 %) finds outlying is set apart from the pool: its "
            "comparisons use its own spread (Welch). Where the two cells ran on different kinds of device (fp32 "
            "on a CPU, bf16 autocast on a GPU) in different shares, Δ is corrected by the offset between them as "
            "the same runs on both measure it (their mean gap, times the difference in shares), and that mean's "
            "standard error is a third term; the evidence names each side's machines in brackets.",
            "", "Verdict: 'beats' held above 0, not held below 0; 'matches or beats' held above −m, not held below −m "
            "(m: accuracy 2, BLEU / METEOR / ROUGE-L 1, NIST 0.1, CIDEr 0.05); otherwise, or with one seed or a run "
            "that did not learn or failed to train (diverged, barely trained), inconclusive; (marginal): the "
            f"interval's end lies within {MARGINAL:.0%} of its half-width of the line that decided the verdict."]
