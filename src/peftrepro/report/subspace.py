"""`make figure-subspace`: the paper's Figures 3 and 4 (§7.2) from our own Table 6 runs.

    python -m peftrepro.report.subspace [--runs results/runs] [--out results/tables] [--profile mini]
                                        [--seeds 0,1] [--tasks wikisql,mnli] [--ranks 8,64]

Figure 3: φ(A_{r=8}, A_{r=64}, i, j) (report.lowrank) of the same seed, for ΔW_q and ΔW_v. Figure 4:
φ between A_{r=64} of two seeds, beside two random Gaussian matrices of the same shape. Both at the
middle layer, as the paper shows its 48th of 96; the page also gives the other kept layer's numbers.
Writes figure_subspace.md (the paper's statements judged on ours, the runs read),
figure_subspace_statements.csv (those verdicts) and the two PNGs; when a run it needs is missing it
says which, exits 1 and writes nothing.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from peftrepro.errors import PeftReproError
from peftrepro.report.factors import WEIGHTS, AdaptedRun, analysis_args, find_runs, layer_label, runs_table, verdict
from peftrepro.report.lowrank import (
    RANDOM_DRAWS,
    RANDOM_QUANTILE,
    SHARED,
    chance_cosine,
    random_similarity,
    shared_directions,
    subspace_similarity,
)
from peftrepro.report.plots import plot_heatmaps
from peftrepro.runs.records import atomic_write_text

Runs = Mapping[tuple[str, int, int], AdaptedRun]

NAME = "figure_subspace"
FIGURE_RANKS, FIGURE_SEEDS = f"{NAME}_ranks.png", f"{NAME}_seeds.png"
PAPER_RANKS = (8, 64)
SOURCE = "arXiv v2 §7.2"


@dataclass(frozen=True)
class Statement:
    """One of the paper's statements, judged on ours at one task (and weight)."""

    statement: str
    source: str
    task: str
    weight: str
    ours: str
    verdict: str


def _phi_ranks(runs: Runs, task: str, seed: int, ranks: tuple[int, int],
               layer: int, weight: str) -> np.ndarray:
    low, high = (runs[(task, r, seed)] for r in ranks)
    return subspace_similarity(low.A(layer, weight), high.A(layer, weight))


def _phi_seeds(runs: Runs, task: str, pair: tuple[int, int], rank: int,
               layer: int, weight: str) -> np.ndarray:
    first, second = (runs[(task, rank, seed)] for seed in pair)
    return subspace_similarity(first.A(layer, weight), second.A(layer, weight))


def _shared_seeds(runs: Runs, task: str, pair: tuple[int, int], rank: int, layer: int, weight: str) -> int:
    """The directions A_r of two seeds share beyond chance (cos² above chance_cosine)."""
    first, second = (runs[(task, rank, seed)] for seed in pair)
    A1, A2 = first.A(layer, weight), second.A(layer, weight)
    return shared_directions(A1, A2, chance_cosine(*A1.shape))


def _more(a: int, b: int) -> bool | None:
    """a > b, and None for a tie, which says neither."""
    return None if a == b else a > b


def _judged(runs: Runs, keys: Sequence[tuple[str, int, int]]) -> bool:
    return not any(runs[key].failed_fit for key in keys)


def statements(runs: Runs, tasks: Sequence[str], seeds: Sequence[int],
               ranks: tuple[int, int]) -> list[Statement]:
    """The paper's statements about Figures 3 and 4, judged per task at the middle layer over seeds
    (runs that did not learn are shown but left out of the verdict)."""
    low, high = ranks
    pairs = list(itertools.combinations(seeds, 2))
    out = []
    for task in tasks:
        layer = runs[(task, high, seeds[0])].middle_layer
        d_in = runs[(task, high, seeds[0])].A(layer, WEIGHTS[0]).shape[1]
        chance = chance_cosine(high, d_in)
        shared = {(w, pair): _shared_seeds(runs, task, pair, high, layer, w) for w in WEIGHTS for pair in pairs}
        judged = [s for s in seeds if _judged(runs, [(task, low, s), (task, high, s)])]
        judged_pairs = [p for p in pairs if _judged(runs, [(task, high, s) for s in p])]
        for weight in WEIGHTS:
            top = {seed: _phi_ranks(runs, task, seed, ranks, layer, weight)[0, 0] for seed in seeds}
            out.append(Statement(
                f"The top direction of A_{{r={low}}} is shared with A_{{r={high}}}: φ(1, 1) > {SHARED} "
                f"(random subspaces: {1 / d_in:.4f})", f"{SOURCE}, Figure 3", task, weight,
                ", ".join(f"seed {s}: {v:.2f}" for s, v in top.items()), verdict([top[s] > SHARED for s in judged])))
            out.append(Statement(
                f"Two seeds at r={high} share more directions than two random Gaussian matrices: a principal "
                f"angle with cos² above {chance:.2f}, which {100 - RANDOM_QUANTILE} % of random pairs exceed",
                f"{SOURCE}, Figure 4", task, weight,
                ", ".join(f"seeds {a}/{b}: {shared[(weight, (a, b))]}" for a, b in pairs),
                verdict([shared[(weight, p)] > 0 for p in judged_pairs])))
        out.append(Statement(
            "ΔW_q has a higher intrinsic rank than ΔW_v: the two seeds share more directions of ΔW_q "
            "(beyond chance, as above; a tie says neither)", f"{SOURCE}, Figure 4", task, "W_q vs W_v",
            ", ".join(f"seeds {a}/{b}: {shared[('W_q', (a, b))]} vs {shared[('W_v', (a, b))]}" for a, b in pairs),
            verdict([_more(shared[("W_q", p)], shared[("W_v", p)]) for p in judged_pairs], "tied")))
    return out


def layer_lines(runs: Runs, tasks: Sequence[str], seeds: Sequence[int],
                ranks: tuple[int, int]) -> list[str]:
    """Markdown: the figures' key numbers at every kept layer (the paper: 'the conclusion holds for other layers')."""
    low, high = ranks
    pairs = list(itertools.combinations(seeds, 2))
    lines = [f"| Task | Layer | Weight | φ(A_r={low}, A_r={high}, 1, 1) per seed | φ({low}, {low}) per seed "
             f"| directions two seeds share at r={high}, beyond chance |", "|---|---|---|---|---|---|"]
    for task in tasks:
        kept = runs[(task, high, seeds[0])].factors
        for layer, weight in itertools.product(kept.layers, WEIGHTS):
            phis = [_phi_ranks(runs, task, s, ranks, layer, weight) for s in seeds]
            shared = [_shared_seeds(runs, task, p, high, layer, weight) for p in pairs]
            lines.append(f"| {task} | {layer_label(layer, kept.n_layers)} | {weight} "
                         f"| {', '.join(f'{p[0, 0]:.2f}' for p in phis)} "
                         f"| {', '.join(f'{p[low - 1, low - 1]:.2f}' for p in phis)} | {', '.join(map(str, shared))} |")
    return lines


def ranks_panels(runs: Runs, tasks: Sequence[str], seed: int, ranks: tuple[int, int]) -> list[list[tuple[str, np.ndarray]]]:
    """Figure 3: per task, φ over i ≤ r_low, j ≤ r_high for ΔW_q and ΔW_v, then the same for j ≤ r_low."""
    low, high = ranks
    panels = []
    for task in tasks:
        run = runs[(task, high, seed)]
        layer, row = run.middle_layer, []
        for weight in WEIGHTS:
            phi = _phi_ranks(runs, task, seed, ranks, layer, weight)
            where = f"{task}, ΔW_{weight[-1]}, layer {layer_label(layer, run.factors.n_layers)}, seed {seed}"
            row += [(f"{where}\nφ(A_r={low}, A_r={high}, i, j)", phi), (f"{where}\nzoom: j ≤ {low}", phi[:, :low])]
        panels.append([row[0], row[2], row[1], row[3]])  # the paper's order: both weights, then both zooms
    return panels


def seeds_panels(runs: Runs, tasks: Sequence[str], pair: tuple[int, int], rank: int) -> list[list[tuple[str, np.ndarray]]]:
    """Figure 4: per task, φ between A_{r=rank} of two seeds for ΔW_q and ΔW_v, and two random Gaussian matrices."""
    panels = []
    for task in tasks:
        run = runs[(task, rank, pair[0])]
        layer = run.middle_layer
        where = f"layer {layer_label(layer, run.factors.n_layers)}, A_r={rank}, seed {pair[0]} vs {pair[1]}"
        d_in = run.A(layer, WEIGHTS[0]).shape[1]
        panels.append([*((f"{task}, ΔW_{w[-1]}, {where}", _phi_seeds(runs, task, pair, rank, layer, w)) for w in WEIGHTS),
                       (f"two random Gaussian {rank} × {d_in} matrices", random_similarity(rank, d_in))])
    return panels


def page(runs: Runs, found: Sequence[Statement], tasks: Sequence[str],
         seeds: Sequence[int], ranks: tuple[int, int], profile: str) -> str:
    low, high = ranks
    pair = tuple(seeds[:2])
    example = runs[(tasks[0], high, seeds[0])]
    d_in = example.A(example.middle_layer, "W_q").shape[1]
    first_block_kept = 0 in example.factors.layers
    rows = "\n".join(f"| {s.statement} ({s.source}) | {s.task} | {s.weight} | {s.ours} | **{s.verdict}** |" for s in found)
    return "\n".join([
        f"# Figures 3 and 4 of the paper (§7.2): subspace similarity of LoRA's A, from our Table 6 runs ({profile})",
        "",
        f"Generated by `make figure-subspace PROFILE={profile}` (`python -m peftrepro.report.subspace`) from the "
        "`lora_factors.safetensors` of the runs listed at the end; do not edit.",
        "",
        "φ(A₁, A₂, i, j) = ‖U_{A₁}^{i⊤} U_{A₂}^{j}‖²_F / min(i, j) (§7.2 eq. 4, App. G), with U_A the right-singular "
        "vectors of A (r × d_in) and U^i its top-i columns: 1 where the top-i directions of one lie in the span of "
        f"the top-j of the other, 0 where they are orthogonal; two random subspaces of R^{d_in} give about "
        f"max(i, j)/{d_in}. The figures show the middle layer, as the paper shows its 48th of 96.",
        "",
        f"**Figure 3**: A_r={low} vs A_r={high} of the same seed ({seeds[0]}), ΔW_q and ΔW_v; right, the first "
        f"{low} columns zoomed. ![Figure 3]({FIGURE_RANKS})",
        "",
        f"**Figure 4**: A_r={high} of seed {pair[0]} vs seed {pair[1]}, and two random Gaussian matrices. "
        f"![Figure 4]({FIGURE_SEEDS})",
        "",
        "## The paper's statements, judged on ours",
        "",
        f"At the middle layer, for each seed (Figure 3) or pair of seeds (Figure 4); a statement is held where "
        "every run that learned says so, not held where none does. Figure 3's bar, φ > "
        f"{SHARED}, is the paper's (§7.2: \"share a subspace of dimension 1 with normalized similarity > "
        f"{SHARED}\"). *Directions two seeds share* (Figure 4), for which the paper sets no bar: the principal "
        "angles between their row spaces whose cos² exceeds the largest cos² of two random Gaussian matrices of "
        f"the same shape in all but {100 - RANDOM_QUANTILE} % of {RANDOM_DRAWS} draws "
        f"(cos² {chance_cosine(high, d_in):.2f} at r={high}, d_in = {d_in}; "
        "App. G: the cos² are the squared singular values of U₁ᵀU₂, whose sum is φ's numerator). The paper's "
        f"{SHARED} would not do there: random pairs stay below it at this width, and so may two seeds that share "
        "directions well beyond chance.",
        "",
        "| Statement (source) | Task | Weight | Ours | Verdict |", "|---|---|---|---|---|", rows,
        "",
        "## Every kept layer",
        "",
        *layer_lines(runs, tasks, seeds, ranks),
        "",
        ("**Caution, layer 1:**" if first_block_kept else "Layer 1 is not among the kept layers, which is as well:")
        + " there, W_q of two "
        "runs of one seed starts from the same A (one seeded random stream fills both, so the top rows of "
        f"A_r={high} are A_r={low} as initialised) and Figure 3 overlaps by construction. Every later matrix draws "
        "from a point of the stream that the ranks have moved by different amounts: their starts are independent.",
        "",
        "## Runs read",
        "",
        "How far training moved A from its random initialisation, ‖A − A_init‖_F / ‖A_init‖_F, bears on "
        "every number above: where A barely moved, φ mostly compares two random initialisations.",
        "",
        *runs_table(runs),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = analysis_args("python -m peftrepro.report.subspace", __doc__, PAPER_RANKS, argv,
                         seeds_help="seeds to compare (Figure 4 needs two)")
    seeds, tasks, ranks = args.seeds, args.tasks, args.ranks
    if len(seeds) < 2 or len(ranks) != 2 or ranks[0] >= ranks[1]:
        print(f"figure-subspace: Figure 4 compares two seeds and Figure 3 a low with a high rank; got seeds {seeds} "
              f"(e.g. SEEDS=0,1) and ranks {list(ranks)} (e.g. --ranks 8,64)", file=sys.stderr)
        return 2
    print(f"figure-subspace: reads the {args.profile} runs of LoRA on W_q,W_v at r={ranks[0]} and r={ranks[1]}, "
          f"seeds {','.join(map(str, seeds))}, tasks {','.join(tasks)}, under {args.runs}/table_rank")
    try:
        runs = find_runs(args.runs, args.profile, tasks, ranks, seeds)
        found = statements(runs, tasks, seeds, ranks)
        text = page(runs, found, tasks, seeds, ranks, args.profile)
    except PeftReproError as error:
        print(f"figure-subspace: {type(error).__name__}: {error}\nnothing written", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    plot_heatmaps(ranks_panels(runs, tasks, seeds[0], ranks), args.out / FIGURE_RANKS)
    plot_heatmaps(seeds_panels(runs, tasks, (seeds[0], seeds[1]), ranks[1]), args.out / FIGURE_SEEDS)
    verdicts = pd.DataFrame([asdict(statement) for statement in found])
    atomic_write_text(args.out / f"{NAME}_statements.csv", verdicts.to_csv(index=False))
    atomic_write_text(args.out / f"{NAME}.md", text)
    for run in sorted({run.record.run_key for run in runs.values()}):
        print(f"  read {run}")
    print(f"wrote {args.out / NAME}.md, _statements.csv, {FIGURE_RANKS}, {FIGURE_SEEDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
