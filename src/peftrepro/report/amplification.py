"""`make table-amplification`: the paper's Table 7 (§7.3) from our own Table 6 runs.

    python -m peftrepro.report.amplification [--runs results/runs] [--out results/tables] [--profile mini]
                                             [--seeds 0,1] [--tasks wikisql,mnli] [--ranks 4,64]

For ΔW = (α/r)·B·A (the update LoRA's merge() adds) of W_q and W_v at each kept layer, and the frozen
W of the backbone the runs trained: ‖UᵀWVᵀ‖_F with U, V the top-r singular vectors of ΔW, of W, and of
random Gaussian matrices (report.lowrank), ‖W‖_F, ‖ΔW‖_F and the amplification factor ‖ΔW‖_F /
‖UᵀWVᵀ‖_F (ΔW's U, V; App. H.4), at r=4 and r=64, beside the paper's values (data/paper.csv). Writes
table_amplification.md (ours beside the paper's, its statements judged, the runs read) and
table_amplification.csv (one row per run, layer and weight) and table_amplification_statements.csv
(the verdicts); when a run it needs is missing it says
which, exits 1 and writes nothing.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from peftrepro.errors import PeftReproError
from peftrepro.report.factors import (
    WEIGHTS,
    AdaptedRun,
    analysis_args,
    find_runs,
    layer_label,
    pretrained_weights,
    runs_table,
    verdict,
)
from peftrepro.report.lowrank import RANDOM_DRAWS, RANDOM_QUANTILE, projection_norms
from peftrepro.report.paper import load_paper
from peftrepro.runs.records import atomic_write_text

NAME = "table_amplification"
PAPER_RANKS = (4, 64)
SOURCE = "arXiv v2 §7.3"
COLUMNS = ("delta_directions", "w_directions", "random_directions", "w_norm", "delta_norm", "amplification")
HEADERS = ("‖UᵀWVᵀ‖_F, ΔW's directions", "W's top directions", "random directions", "‖W‖_F", "‖ΔW‖_F",
           "amplification ‖ΔW‖_F / ‖UᵀWVᵀ‖_F", "the same with random directions")


def measure(runs: dict[tuple[str, int, int], AdaptedRun], weights_of: dict) -> pd.DataFrame:
    """One row per run, kept layer and weight: Table 7's quantities."""
    rows = []
    for (task, rank, seed), run in sorted(runs.items()):
        for layer, weight in itertools.product(run.factors.layers, WEIGHTS):
            found = projection_norms(weights_of[(layer, weight)], run.delta(layer, weight), rank)
            rows.append({"task": task, "layer": layer, "n_layers": run.factors.n_layers, "weight": weight, "r": rank,
                         "seed": seed, **{c: getattr(found, c) for c in COLUMNS}, "random_high": found.random_high,
                         "random_low": found.random_low,
                         "random_amplification": found.delta_norm / found.random_directions,
                         "middle_layer": layer == run.middle_layer, "judges": run.failed_fit is None,
                         "run": run.record.original_folder.name})  # as "Runs read" names it
    return pd.DataFrame(rows)


def paper_rows() -> list[str]:
    """Markdown rows of the paper's Table 7 (GPT-3 175B, W_q of layer 48 of 96)."""
    paper = load_paper()
    lines = []
    for rank in PAPER_RANKS:
        cells = paper[(paper["table"] == "table7") & (paper["row"] == f"W_q r={rank}")].set_index("column")
        amplification = cells.loc["amplification"]
        shown = [f"{cells.loc[c, 'value']:.2f}" for c in COLUMNS[:-1]] + [
            amplification["printed"] if amplification["printed"][0].isdigit()
            else f"{amplification['value']:.2f} (computed; {amplification['printed']})"]
        random = cells.loc["delta_norm", "value"] / cells.loc["random_directions", "value"]
        lines.append(f"| **paper** (GPT-3 175B) | | 48 of 96 | W_q | {rank} | " + " | ".join(shown)
                     + f" | about {float(f'{random:.2g}'):g} (computed from printed, rounded values) |")
    return lines


def scale_text(table: pd.DataFrame) -> str:
    """How large our updates are beside the paper's: the factor grows in proportion to ‖ΔW‖_F."""
    paper = load_paper()
    paper = paper[paper["table"] == "table7"].pivot_table(index="row", columns="column", values="value")
    theirs = ", ".join(f"{row['delta_norm'] / row['w_norm']:.2g} at {name.split()[-1]}" for name, row in paper.iterrows())
    ratio = table["delta_norm"] / table["w_norm"]
    return (f"Scale: ‖ΔW‖_F / ‖W‖_F is {ratio.min():.2g}–{ratio.max():.2g} in our runs, {theirs} in the paper's; the "
            "amplification factor grows in proportion to ‖ΔW‖_F, so read how rows order (rank against rank, ΔW's "
            "directions against random ones), not how our factors compare with the paper's.")


def ours_rows(table: pd.DataFrame) -> list[str]:
    """Markdown rows of ours: the mean over seeds, the amplification with its seeds' range."""
    lines = []
    for (task, layer, weight, rank), group in table.groupby(["task", "layer", "weight", "r"], sort=True):
        means = [f"{group[c].mean():.2f}" for c in COLUMNS[:-1]]
        amp = group["amplification"]
        spread = f" ({amp.min():.3g}–{amp.max():.3g}, {len(amp)} seeds)" if len(amp) > 1 else ""
        lines.append(f"| ours | {task} | {layer_label(layer, int(group['n_layers'].iloc[0]))} | {weight} | {rank} | "
                     + " | ".join(means) + f" | {amp.mean():.3g}{spread} | {group['random_amplification'].mean():.3g} |")
    return lines


@dataclass(frozen=True)
class Check:
    """One of the paper's statements about Table 7 as a test on our rows."""

    text: str
    ours: Callable[[pd.DataFrame], str]  # our values, as the verdict sees them
    holds: Callable[[pd.DataFrame], list[bool | None]]  # one outcome per judged seed; None: at chance level


def middle(random: float, top: float) -> float:
    """Halfway from random directions to W's top ones on a log scale: what ΔW's directions must stay under
    to count as not emphasised in W."""
    return float(np.sqrt(random * top))


def beyond_chance(row: pd.Series) -> bool:
    """Whether ΔW's directions carry more of W than all but 5 % of random directions (the first statement):
    where they do not, ΔW looks random from W's side, and the statements built on it say nothing."""
    return bool(row["delta_directions"] > row["random_high"])


def against_chance(row: pd.Series) -> bool | None:
    """The first statement for one run: True above the random draws' 95th percentile, False under their
    5th (ΔW avoids W), None between (not told apart from random directions)."""
    if beyond_chance(row):
        return True
    return False if row["delta_directions"] < row["random_low"] else None


def checks(low: int, high: int) -> list[Check]:
    def per_seed(frame: pd.DataFrame, test: Callable[[pd.Series], bool | None]) -> list[bool | None]:
        return [test(row) for _, row in frame[frame["judges"]].iterrows()]

    def by_rank(frame: pd.DataFrame, values: str) -> pd.DataFrame:
        return frame.pivot_table(index="seed", columns="r", values=values)

    def low_beats_high(frame: pd.DataFrame) -> list[bool | None]:
        judged = frame[frame["judges"]].groupby("seed").filter(lambda g: g["r"].nunique() == 2)
        chance = judged.groupby("seed").apply(lambda g: not g.apply(beyond_chance, axis=1).all())
        return [None if chance[seed] else bool(row[low] > row[high])
                for seed, row in by_rank(judged, "amplification").iterrows()]

    def not_top(row: pd.Series) -> bool | None:
        return bool(row["delta_directions"] < middle(row["random_directions"], row["w_directions"])) \
            if beyond_chance(row) else None

    return [
        Check("ΔW has a stronger correlation with W than a random matrix: ‖UᵀWVᵀ‖_F is larger in ΔW's directions "
              f"than in all but {100 - RANDOM_QUANTILE} % of random ones (ours: above the {RANDOM_QUANTILE}th "
              f"percentile of {RANDOM_DRAWS} draws, not held under their {100 - RANDOM_QUANTILE}th; paper: 0.32 vs "
              "0.02 at r=4, 1.90 vs 0.33 at r=64, one draw)",
              lambda f: ", ".join(f"r={r} seed {s}: {d:.3g} vs {lo:.3g}–{hi:.3g}" for r, s, d, lo, hi in
                                  f[["r", "seed", "delta_directions", "random_low", "random_high"]]
                                  .itertuples(index=False)),
              lambda f: per_seed(f, against_chance)),
        Check("ΔW amplifies directions W does not emphasise, not W's top directions: ΔW's directions carry less of W "
              "than the geometric mean of random and W's top-r directions, i.e. nearer random than W's top on a log "
              "scale (paper: 0.32 < √(0.02·21.67) = 0.66 at r=4, 1.90 < √(0.33·37.71) = 3.53 at r=64). Not a fixed "
              "share of W's top (paper: 1.5 %, 5.0 %): on a narrower model r random directions alone carry more. "
              "Judged where ΔW beats chance (the first statement): a ΔW at chance level amplifies nothing of W",
              lambda f: ", ".join(f"r={r} seed {s}: {d:.3g} vs {middle(x, w):.3g}" for r, s, d, x, w in
                                  f[["r", "seed", "delta_directions", "random_directions", "w_directions"]]
                                  .itertuples(index=False)),
              lambda f: per_seed(f, not_top)),
        Check(f"The amplification is much larger at low rank: r={low} above r={high} (paper: 21.5 vs about 2, App. "
              "H.4). Judged where ΔW beats chance at both ranks. Read it as the ordering of a factor that random "
              "directions show by themselves (the last column; the paper's, about 350 vs 11, too): held says "
              "no more than that ΔW keeps it",
              lambda f: ", ".join(f"seed {s}: {row[low]:.3g} vs {row[high]:.3g} (random directions: "
                                  f"{chance[low]:.3g} vs {chance[high]:.3g})"
                                  for (s, row), (_, chance) in zip(by_rank(f, "amplification").iterrows(),
                                                                   by_rank(f, "random_amplification").iterrows())),
              low_beats_high),
    ]


def statement_rows(table: pd.DataFrame, low: int, high: int) -> pd.DataFrame:
    """The paper's statements judged per task and weight at the middle layer (the paper's one layer)."""
    rows = []
    middle = table[table["middle_layer"]]
    for check, ((task, weight), frame) in itertools.product(checks(low, high), middle.groupby(["task", "weight"])):
        rows.append({"statement": check.text, "source": f"{SOURCE}, Table 7", "task": task, "weight": weight,
                     "ours": check.ours(frame), "verdict": verdict(check.holds(frame), "at chance level")})
    return pd.DataFrame(rows)


def page(table: pd.DataFrame, judged: pd.DataFrame, runs: dict, ranks: tuple[int, int], profile: str) -> str:
    header = "| | Task | Layer | Weight | r | " + " | ".join(HEADERS) + " |"
    statement_lines = [f"| {row.statement} ({row.source}) | {row.task} | {row.weight} | {row.ours} | **{row.verdict}** |"
                       for row in judged.itertuples(index=False)]
    return "\n".join([
        f"# Table 7 of the paper (§7.3): how ΔW compares to W, from our Table 6 runs ({profile})",
        "",
        f"Generated by `make table-amplification PROFILE={profile}` (`python -m peftrepro.report.amplification`) from "
        f"the `lora_factors.safetensors` of the runs listed at the end and the frozen weights of the backbone they "
        f"trained; do not edit. Per run: [`{NAME}.csv`]({NAME}.csv).",
        "",
        "W projected on r directions: ‖UᵀWVᵀ‖_F with U, V the top-r left/right singular vectors of (1) ΔW, "
        f"(2) W, (3) a random Gaussian matrix (ours: the mean of {RANDOM_DRAWS} seeded draws, their "
        f"{RANDOM_QUANTILE}th percentile in the CSV and the statements; the paper: one). ΔW = (α/r)·B·A, "
        "the update LoRA's merge() adds. The amplification factor ‖ΔW‖_F / ‖UᵀWVᵀ‖_F (ΔW's own U, V; App. H.4) "
        "says how strongly ΔW scales up the part of W that already lies in its directions. The paper reports "
        "W_q of GPT-3's layer 48 of 96; we add W_v and a second layer. The paper's numbers: Table 7 and §7.3 "
        "(docs/paper-reference.md §11); its r=64 factor is computed from Table 7 (3.57/1.90), App. H.4 says "
        "\"only around 2\".",
        "",
        header, "|" + "---|" * (5 + len(HEADERS)), *paper_rows(), *ours_rows(table),
        "",
        scale_text(table),
        "",
        "## The paper's statements, judged on ours",
        "",
        "At the middle layer, per seed; held where every run that learned says so, not held where none does.",
        "",
        "| Statement (source) | Task | Weight | Ours | Verdict |", "|---|---|---|---|---|", *statement_lines,
        "",
        "## Runs read",
        "",
        *runs_table(runs),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = analysis_args("python -m peftrepro.report.amplification", __doc__, PAPER_RANKS, argv)
    seeds, tasks, ranks = args.seeds, args.tasks, args.ranks
    if not seeds or len(ranks) != 2 or ranks[0] >= ranks[1]:
        print(f"table-amplification: needs a seed or more and a low with a high rank; got seeds {seeds} and ranks "
              f"{list(ranks)} (e.g. --ranks 4,64)", file=sys.stderr)
        return 2
    print(f"table-amplification: reads the {args.profile} runs of LoRA on W_q,W_v at r={ranks[0]} and r={ranks[1]}, "
          f"seeds {','.join(map(str, seeds))}, tasks {','.join(tasks)}, under {args.runs}/table_rank")
    try:
        runs = find_runs(args.runs, args.profile, tasks, ranks, seeds)
        layers = sorted({layer for run in runs.values() for layer in run.factors.layers})
        table = measure(runs, pretrained_weights(runs.values(), layers))
        judged = statement_rows(table, *ranks)
        text = page(table, judged, runs, ranks, args.profile)
    except PeftReproError as error:
        print(f"table-amplification: {type(error).__name__}: {error}\nnothing written", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{NAME}.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(args.out / f"{NAME}_statements.csv", judged.to_csv(index=False))
    atomic_write_text(args.out / f"{NAME}.md", text)
    for run in sorted({run.record.run_key for run in runs.values()}):
        print(f"  read {run}")
    print(f"wrote {args.out / NAME}.md, .csv, _statements.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
