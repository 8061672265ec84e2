"""The paper's qualitative claims per table, checked on our numbers.

Each claim is a comparison between cells of one of our tables and gets a verdict:
- "A beats B": held when mean(A) − mean(B) exceeds 2 standard errors of the difference over seeds
  (SE = sqrt(s_A²/n_A + s_B²/n_B)), not held when it is below −2 SE, otherwise inconclusive.
- "A matches or beats B": not held when B is better by more than 2 SE, otherwise held ("tied"
  means within 2 SE of the seed spread, so a wide spread makes ties easy: read the evidence).
- Either is inconclusive when a cell is missing or has fewer than 2 seeds (no spread to judge by).
A claim over several comparisons is not held if any is not held, else inconclusive if any is
inconclusive, else held. Cells marked n/a (method not applicable to the model) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from peftrepro.aggregate import TableResult

Z = 2.0  # half-width of the interval on a difference, in standard errors
MAX_SHOWN = 3  # comparisons quoted as evidence of a verdict (the rest are counted)
HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"


@dataclass(frozen=True)
class Cell:
    label: str
    mean: float
    std: float
    n: int
    status: str

    def __str__(self) -> str:
        if self.n == 0:
            return f"{self.label} —"
        spread = f" ± {self.std:.2f}" if self.n > 1 else ""
        return f"{self.label} {self.mean:.2f}{spread} (n={self.n})"


@dataclass(frozen=True)
class Comparison:
    verdict: str
    evidence: str
    slack: float = math.inf  # how far the difference is from flipping the verdict (closest first)


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    verdict: str
    evidence: str


def _difference(a: Cell, b: Cell) -> tuple[float, float] | str:
    """(mean difference, Z·SE), or why no judgement is possible."""
    for cell in (a, b):
        if cell.n == 0:
            return f"{cell.label} has no result"
        if cell.n < 2:
            return f"{cell.label} has one seed, so no spread"
    return a.mean - b.mean, Z * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def _evidence(a: Cell, b: Cell, diff: tuple[float, float] | str) -> str:
    if isinstance(diff, str):
        return f"{a} vs {b}: {diff}"
    return f"{a} vs {b}: Δ = {diff[0]:+.2f} ± {diff[1]:.2f}"


def beats(a: Cell, b: Cell) -> Comparison:
    diff = _difference(a, b)
    if isinstance(diff, str):
        return Comparison(INCONCLUSIVE, _evidence(a, b, diff))
    delta, margin = diff
    verdict = HELD if delta - margin > 0 else NOT_HELD if delta + margin < 0 else INCONCLUSIVE
    return Comparison(verdict, _evidence(a, b, diff), delta - margin)


def matches_or_beats(a: Cell, b: Cell) -> Comparison:
    diff = _difference(a, b)
    if isinstance(diff, str):
        return Comparison(INCONCLUSIVE, _evidence(a, b, diff))
    delta, margin = diff
    return Comparison(NOT_HELD if delta + margin < 0 else HELD, _evidence(a, b, diff), delta + margin)


def combine(text: str, source: str, comparisons: Sequence[Comparison]) -> Claim:
    """One verdict from several comparisons; the evidence shows the comparisons that decide it."""
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
    return Claim(text, source, verdict, evidence)


def _cell(result: TableResult, row: str, column: str, label: str) -> Cell:
    stats = result.stats(row, column)
    return Cell(label, float(stats["mean"]), float(stats["std"]) if stats["n"] > 1 else math.nan,
                int(stats["n"]), str(stats["status"]))


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
                    "§7.1, Table 5", [beats(qv, q)]),
            combine(f"{name}: adapting W_q,W_v (r=4) beats W_k alone (r=8) at an equal budget",
                    "§7.1, Table 5", [beats(qv, k)]),
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
                    "§7.2, Table 6", [matches_or_beats(qv_r1, cell("W_q,W_v", r)) for r in ranks if r != "r=1"]),
            combine(f"{name}: at r=1, W_q,W_v beats W_q alone (small r suffices more for W_q,W_v)",
                    "§7.2, Table 6", [beats(qv_r1, cell("W_q", "r=1"))]),
            combine(f"{name}: a larger rank does not help: r=8 matches or beats r=64 for every weight type",
                    "§7.2, Table 6", [matches_or_beats(cell(w, "r=8"), cell(w, "r=64"))
                                      for w in ("W_q", "W_q,W_v", "W_q,W_k,W_v,W_o")]),
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
                [matches_or_beats(bleu["lora"], bleu["ft"])]),
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
                    [matches_or_beats(lora, cells["ft"])]),
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
    lines += [f"| {c.text} | {c.source} | **{c.verdict}** | {c.evidence} |" for c in claims]
    lines += ["", "Rule: 'beats' is held when the difference of means exceeds 2 standard errors of the "
              "difference over seeds, not held below −2 SE, inconclusive in between; 'matches or beats' is "
              "not held only when the other cell is better by more than 2 SE. Fewer than 2 seeds or a "
              "missing cell: inconclusive."]
    return lines
