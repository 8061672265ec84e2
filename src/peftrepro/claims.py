"""The paper's qualitative claims per table, checked on our numbers.

Each claim is a comparison between cells of one of our tables and gets a verdict:
- "A beats B": held when mean(A) − mean(B) exceeds 2 standard errors of the difference, not held
  when it is below −2 SE, otherwise inconclusive.
- "A matches or beats B": not held when B is better by more than 2 SE, otherwise held ("tied"
  means within 2 SE, so a wide error makes ties easy: read the evidence).
- Either is inconclusive when a cell is missing or has fewer than 2 seeds (no spread to judge by),
  or when a run of it barely lowered its training loss (a failed fit says nothing of the method).
SE² = s_A²/n_A + s_B²/n_B (the seed spread) + the error from the finite evaluation set. Every
seed is scored on the same N examples, so that error does not shrink with seeds. For accuracies it
is paired: both cells are scored on the same examples, so it is sd(d)²/N over the per-example
differences d (each cell's score of an example averaged over its seeds, from the saved predictions),
the standard error of a paired test; the d also carry some seed noise, so adding both terms is
slightly conservative. Where the predictions are missing or the examples differ, the unpaired
binomial bound p_A(1−p_A)/N_A + p_B(1−p_B)/N_B stands in (conservative for "beats", lenient for
"matches or beats"). Corpus metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) get no such term: their SE
is the seed spread alone.
A claim over several comparisons is not held if any is not held, else inconclusive if any is
inconclusive, else held. Cells marked n/a (method not applicable to the model) are left out.
A verdict decided by less than MARGINAL of its 2-SE margin is marked marginal: one more seed may flip
it, which the verdict word alone would not say.
A claim that is not held also says why that may be at this scale, and how the compared cells
trained (trainable parameters, learning rate, steps, final training loss, from their records).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from peftrepro.aggregate import ExampleScores, TableResult

Z = 2.0  # half-width of the interval on a difference, in standard errors
MARGINAL = 0.1  # a verdict this close to its line, as a fraction of the 2-SE margin, is marginal
MAX_SHOWN = 3  # comparisons quoted as evidence of a verdict (the rest are counted)
HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"


@dataclass(frozen=True)
class Cell:
    label: str
    mean: float
    std: float
    n: int
    status: str
    sampling_se: float = 0.0  # binomial error of the mean from the evaluation set (0: not estimated)
    examples: ExampleScores | None = None  # per-example scores, mean over seeds (accuracies only)
    training: str = ""  # how its runs trained (aggregate.training_text), quoted when a claim fails
    barely_trained: str = ""  # runs whose training barely lowered the loss (aggregate.Record.barely_trained)

    def __str__(self) -> str:
        if self.n == 0:
            return f"{self.label} —"
        spread = f" ± {self.std:.2f}" if self.n > 1 else ""
        return f"{self.label} {self.mean:.2f}{spread} (n={self.n})"


@dataclass(frozen=True)
class Comparison:
    verdict: str
    evidence: str
    slack: float = math.inf  # held or not held: how far the difference is from flipping the verdict
    cells: tuple[Cell, ...] = ()
    margin: float = math.inf  # 2 SE of the difference

    @property
    def marginal(self) -> bool:
        """Held or not held, but within MARGINAL of the 2-SE line."""
        return self.slack < MARGINAL * self.margin


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    verdict: str
    evidence: str
    why: str = ""  # not held: why that may be at this scale, with how the compared cells trained
    marginal: bool = False  # every comparison deciding the verdict is marginal


@dataclass(frozen=True)
class Difference:
    delta: float   # mean(A) − mean(B)
    seeds: float   # Z · the SE from the seed spread alone
    sample: float  # Z · the SE from the evaluation set alone (0: a corpus metric)
    how: str = ""  # how the evaluation-set SE was estimated

    @property
    def margin(self) -> float:
        """Z · the SE of the difference, both sources together."""
        return math.hypot(self.seeds, self.sample)

    def __str__(self) -> str:
        text = f"Δ = {self.delta:+.2f} ± {self.margin:.2f}"
        return text + (f" (seeds ± {self.seeds:.2f}, eval set ± {self.sample:.2f} {self.how})" if self.how else "")


def _sample_error(a: Cell, b: Cell) -> tuple[float, str]:
    """The SE of mean(A) − mean(B) from the finite evaluation set, and how it was estimated."""
    if a.examples and b.examples and a.examples.fingerprint == b.examples.fingerprint:
        diffs = [x - y for x, y in zip(a.examples.scores, b.examples.scores)]
        return statistics.stdev(diffs) / math.sqrt(len(diffs)), f"paired over {len(diffs)} examples"
    if a.sampling_se or b.sampling_se:
        return math.hypot(a.sampling_se, b.sampling_se), "unpaired"
    return 0.0, ""


def _difference(a: Cell, b: Cell) -> Difference | str:
    """The difference of means with its margins, or why no judgement is possible."""
    for cell in (a, b):
        if cell.n == 0:
            return f"{cell.label} has no result"
        if cell.n < 2:
            return f"{cell.label} has one seed, so no spread"
        if cell.barely_trained:
            return f"{cell.label} barely trained ({cell.barely_trained}), so its score says nothing of the method"
    sample, how = _sample_error(a, b)
    return Difference(a.mean - b.mean, Z * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n), Z * sample, how)


def _evidence(a: Cell, b: Cell, diff: Difference | str) -> str:
    return f"{a} vs {b}: {diff}"


def beats(a: Cell, b: Cell) -> Comparison:
    diff = _difference(a, b)
    if isinstance(diff, str):
        return Comparison(INCONCLUSIVE, _evidence(a, b, diff), cells=(a, b))
    delta, margin = diff.delta, diff.margin
    verdict = HELD if delta - margin > 0 else NOT_HELD if delta + margin < 0 else INCONCLUSIVE
    slack = {HELD: delta - margin, NOT_HELD: -(delta + margin)}.get(verdict, math.inf)
    return Comparison(verdict, _evidence(a, b, diff), slack, (a, b), margin)


def matches_or_beats(a: Cell, b: Cell) -> Comparison:
    diff = _difference(a, b)
    if isinstance(diff, str):
        return Comparison(INCONCLUSIVE, _evidence(a, b, diff), cells=(a, b))
    delta, margin = diff.delta, diff.margin
    return Comparison(NOT_HELD if delta + margin < 0 else HELD, _evidence(a, b, diff), abs(delta + margin),
                      (a, b), margin)


# Why a claim may fail at a small scale (quoted only under a claim that is not held, followed by
# how the compared cells trained, read from their records). Specific reasons per claim are below.
SCALE_WHY = ("The paper's claim is made on a far larger model (GPT-3 175B; GPT-2 M/L for E2E) trained "
             "on the full data with learning rates tuned per method; here a small quantised model "
             "trains a short schedule on a subset at one untuned learning rate per method, so either "
             "side may be under- or over-fitted.")
WHY_FEWER_MATRICES = ("The paper (§7.1) finds it better to spread a small budget over more weight "
                      "matrices on GPT-3 175B; a small model may instead need a higher rank on fewer "
                      "matrices.")
WHY_LOW_RANK = ("The paper (§7.2) argues that the update has a very low intrinsic rank on GPT-3 175B; "
                "a small model may need more directions. α is fixed across r, so the scale α/r also "
                "changes with r.")
_HIGHER_RANK = ("a small model on a short schedule may need an update of higher rank than LoRA's, "
                "which full fine-tuning is free to make (compare the final training losses).")
WHY_FT = ("The paper's parity with full fine-tuning is on GPT-3 175B (and RoBERTa/DeBERTa with tuned "
          f"learning rates); {_HIGHER_RANK}")
# Table 3 is GPT-2, not GPT-3, and its FT row is not the paper's own run.
WHY_FT_E2E = ("On E2E the paper's LoRA edges out full fine-tuning on GPT-2 M/L trained on the full data, "
              f"against an FT row it cites from Li & Liang (2021); {_HIGHER_RANK}")


def combine(text: str, source: str, comparisons: Sequence[Comparison], why: str = SCALE_WHY) -> Claim:
    """One verdict from several comparisons; the evidence shows the comparisons that decide it.
    A claim that is not held also says why that may be (`why`) and how the deciding cells trained."""
    if not comparisons:
        return Claim(text, source, INCONCLUSIVE, "no comparable cells")
    verdicts = {c.verdict for c in comparisons}
    verdict = NOT_HELD if NOT_HELD in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else HELD
    deciding = [c for c in comparisons if c.verdict == verdict]
    # held: the comparison closest to flipping; otherwise the deciding ones, at most MAX_SHOWN
    shown = [min(deciding, key=lambda c: c.slack)] if verdict == HELD else deciding[:MAX_SHOWN]
    evidence = "; ".join(c.evidence for c in shown)
    if len(comparisons) > len(shown):
        evidence += f" (shown: {len(shown)} of {len(comparisons)} comparisons, those that decide the verdict)"
    # held rests on its weakest comparison (shown); not held on its strongest (any of the deciding)
    marginal = shown[0].marginal if verdict == HELD else verdict == NOT_HELD and all(c.marginal for c in deciding)
    if verdict != NOT_HELD:
        return Claim(text, source, verdict, evidence, marginal=marginal)
    cells = {cell.label: cell for c in shown for cell in c.cells}  # each cell once, in order
    trained = "; ".join(f"{label}: {cell.training}" for label, cell in cells.items())
    return Claim(text, source, verdict, evidence, f"{why} As trained here: {trained}.", marginal)


def _cell(result: TableResult, row: str, column: str, label: str) -> Cell:
    from peftrepro.aggregate import training_text  # local: aggregate imports this module

    stats = result.stats(row, column)
    sampling_se = float(stats["sampling_se"])
    records = result.cell_records(row, column)
    barely = "; ".join(f"seed {r.seed}: {r.barely_trained}" for r in records if r.barely_trained)
    return Cell(label, float(stats["mean"]), float(stats["std"]) if stats["n"] > 1 else math.nan,
                int(stats["n"]), str(stats["status"]), 0.0 if math.isnan(sampling_se) else sampling_se,
                stats["examples"], training_text(records), barely)


TASKS = (("wikisql", "WikiSQL"), ("mnli", "MultiNLI"))


def _weight_type_claims(result: TableResult) -> list[Claim]:
    columns = [axis.key for axis in result.spec.columns]
    claims = []
    for task, name in TASKS:
        cell = lambda column: _cell(result, task, column, column)  # noqa: E731
        qv, q, k, four = cell("W_q,W_v"), cell("W_q"), cell("W_k"), cell("W_q,W_k,W_v,W_o")
        others = [cell(c) for c in columns if c != "W_q,W_k,W_v,W_o"]
        claims += [
            combine(f"{name}: adapting W_q,W_v (r=4) beats W_q alone (r=8) at an equal budget",
                    "§7.1, Table 5", [beats(qv, q)], WHY_FEWER_MATRICES),
            combine(f"{name}: adapting W_q,W_v (r=4) beats W_k alone (r=8) at an equal budget",
                    "§7.1, Table 5", [beats(qv, k)], WHY_FEWER_MATRICES),
            combine(f"{name}: all four (W_q,W_k,W_v,W_o at r=2) is best or tied",
                    "Table 5", [matches_or_beats(four, other) for other in others if other.status != "n/a"]),
        ]
    return claims


def _rank_claims(result: TableResult) -> list[Claim]:
    ranks = [axis.key for axis in result.spec.columns]
    claims = []
    for task, name in TASKS:
        cell = lambda weights, r: _cell(result, f"{task}|{weights}", r, f"{weights} {r}")  # noqa: E731
        qv_r1 = cell("W_q,W_v", "r=1")
        claims += [
            combine(f"{name}: r=1 is already competitive for W_q,W_v (matches or beats every larger r)",
                    "§7.2, Table 6", [matches_or_beats(qv_r1, cell("W_q,W_v", r)) for r in ranks if r != "r=1"],
                    WHY_LOW_RANK),
            combine(f"{name}: at r=1, W_q,W_v beats W_q alone (small r suffices more for W_q,W_v)",
                    "§7.2, Table 6", [beats(qv_r1, cell("W_q", "r=1"))], WHY_LOW_RANK),
            combine(f"{name}: a larger rank does not help: r=8 matches or beats r=64 for every weight type",
                    "§7.2, Table 6", [matches_or_beats(cell(w, "r=8"), cell(w, "r=64"))
                                      for w in ("W_q", "W_q,W_v", "W_q,W_k,W_v,W_o")], WHY_LOW_RANK),
        ]
    return claims


def _arm_cells(result: TableResult, column: str) -> dict[str, Cell]:
    labels = {axis.key: axis.labels[0] for axis in result.spec.rows}
    return {key: _cell(result, key, column, label) for key, label in labels.items()}


def _e2e_claims(result: TableResult) -> list[Claim]:
    bleu = _arm_cells(result, "bleu")
    peft = [cell for key, cell in bleu.items() if key not in ("lora", "ft") and cell.status != "n/a"]
    all_metrics = [matches_or_beats(cells["lora"], cell)
                   for metric in ("bleu", "nist", "meteor", "rouge_l", "cider")
                   for cells in [_arm_cells(result, metric)]
                   for key, cell in cells.items() if key != "lora" and cell.status != "n/a"]
    return [
        combine("LoRA matches or beats every other parameter-efficient method on BLEU",
                "§5.4, Table 3", [matches_or_beats(bleu["lora"], cell) for cell in peft]),
        combine("LoRA matches or beats full fine-tuning on BLEU", "§5.4, Table 3",
                [matches_or_beats(bleu["lora"], bleu["ft"])], WHY_FT_E2E),
        combine("LoRA matches or beats every other method on all five metrics", "Table 3", all_metrics),
    ]


def _methods_claims(result: TableResult) -> list[Claim]:
    claims = []
    for task, name in TASKS:
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


CLAIMS: dict[str, Callable[[TableResult], list[Claim]]] = {
    "table_weight_type": _weight_type_claims,
    "table_rank": _rank_claims,
    "table_e2e": _e2e_claims,
    "table_methods": _methods_claims,
}


def evaluate(result: TableResult) -> list[Claim]:
    """The paper's claims for this table, each with a verdict on our numbers."""
    return CLAIMS[result.spec.name](result)


def render(claims: Sequence[Claim]) -> list[str]:
    """Markdown lines: one table row per claim, then the decision rule."""
    lines = ["| Paper's claim | Where | On our numbers | Evidence (mean ± std (n); Δ ± 2·SE) |",
             "|---|---|---|---|"]
    lines += [f"| {c.text} | {c.source} | **{c.verdict}**{' (marginal)' * c.marginal} | {c.evidence} |"
              for c in claims]
    if reasons := [f"- Not held: {c.text}. {c.why}" for c in claims if c.why]:
        lines += ["", *reasons]
    lines += ["", "Rule: 'beats' is held when the difference of means exceeds 2 standard errors of the "
              "difference, not held below −2 SE, inconclusive in between; 'matches or beats' is not held "
              "only when the other cell is better by more than 2 SE. Fewer than 2 seeds, a missing cell or "
              "a run that barely lowered its training loss: inconclusive. The SE adds the seed spread "
              "(s²/n per cell) and, for accuracies, the error from the finite evaluation set, which more "
              "seeds do not shrink (the same N examples score every seed): paired, sd(d)²/N over the "
              "per-example differences d of the two cells' saved predictions (averaged over seeds); where "
              "those are missing, the unpaired binomial p(1−p)/N of each cell. Corpus metrics (BLEU and "
              "the other E2E scores): the seed spread alone. A verdict marked (marginal) is decided by less "
              f"than {MARGINAL:.0%} of its 2-SE margin: one more seed may flip it."]
    return lines
