"""Run records -> the paper's tables, beside the paper's own numbers.

    python -m peftrepro.report.aggregate [--table NAME|all] [--runs results/runs] [--out results/tables]
                                  [--profile mini] [--seeds 0,1,2] [--strict] [--no-plots]

Reads `results/runs/**/record.json` and, for accuracies, the predictions beside each (the
claims pair two cells example by example), and nothing else: tables are a pure function of the run
folders plus `peftrepro/data/paper.csv`; each table's layout is its spec in `peftrepro.report.specs`. Per
experiment and run key the latest record (`created_at`) wins; unreadable records are reported and
skipped. Each table is written as `<out>/<table>.csv` (wide, numeric: mean, std, n and the paper's
value per paper column) and `<out>/<table>.md` (laid out like the paper's table, each cell "ours
mean ± std (n) · paper value"), with what is missing or failed listed under it, the paper's choices
and ambiguities, and the paper's claims checked on our numbers (`peftrepro.report.claims`). Our raw metrics
are scaled to the paper's printed unit (`peftrepro.report.paper.PAPER_SCALE`: accuracies, BLEU, METEOR and
ROUGE-L ×100).

--out defaults to `tables/` beside --runs. A table with no run yet expects the seeds and the profile
the tables with runs agree on, where --seeds and --profile do not say.

Exit status: 0 when every table was written; with --strict, 1 when some expected cell is missing,
failed or short of seeds (cells whose runs recorded status "not_applicable", e.g. BitFit on a model
without biases, show "n/a": listed, not an error; a cell the table does not measure by design, e.g. FT's
largest weights pruned, shows "n/a" and is neither listed nor expected).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from peftrepro.report.cells import all_tables
from peftrepro.report.records import parse_seeds
from peftrepro.report.render import incomplete_lines, write_table
from peftrepro.report.specs import TABLES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.report.aggregate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="all", choices=["all", *TABLES])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=None, help="(default: tables/ beside --runs)")
    parser.add_argument("--profile", default=None, help="profile to tabulate (default: the latest record's)")
    parser.add_argument("--seeds", default=None, help="seeds every cell should have, e.g. 0,1,2")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a cell is missing, failed or partial")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    args.out = args.out or args.runs.parent / "tables"

    names = list(TABLES) if args.table == "all" else [args.table]
    incomplete = 0
    for name, result in all_tables(args.runs, args.profile, parse_seeds(args.seeds), names).items():
        written = write_table(result, args.out, plots=not args.no_plots)
        gaps = result.incomplete
        incomplete += len(gaps)
        print(f"{name}: {len(result.records)} records, {len(result.cells) - len(gaps)}/{len(result.cells)} "
              f"cells complete -> {', '.join(str(p) for p in written)}")
        for line in incomplete_lines(result):
            print(f"  {line}")
    return 1 if (args.strict and incomplete) else 0


if __name__ == "__main__":
    sys.exit(main())
