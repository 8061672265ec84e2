"""Keep LoRA's factors of runs that finished without them: `python -m peftrepro.runs.factors FOLDER...`

A run keeps `lora_factors.safetensors` when its `lora_factors` option asks (the Table 5, 6 and 4
experiment files do). For runs made before that, or with the option off, this exports the same file
from the run's `adapter.safetensors`, which every finished LoRA run keeps on the machine that trained
it (weights are not committed). It holds each run's claim while it writes (records.claimed), skips
runs that already have the file, and says which runs it could not serve and why. The factors of
runs exported here carry no `a_drift` (A as initialised is known only while the run trains).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from peftrepro.errors import PeftReproError
from peftrepro.runs import records

DEFAULT_LAYERS = ("middle", "last")
DEFAULT_WEIGHTS = ("W_q", "W_v")


def export_missing(folders: Sequence[Path], layers: Sequence[str | int], weights: Sequence[str]) -> dict[str, list[str]]:
    """Export the factors of every finished LoRA run under `folders` that lacks them; the runs by outcome."""
    from peftrepro.methods.checkpoint import WEIGHTS_FILE
    from peftrepro.methods.factors import FACTORS_FILE, blocks_of, export_factors

    outcome: dict[str, list[str]] = {"exported": [], "had them": [], "no adapter on this machine": [],
                                     "being made": []}
    for path in sorted(p for folder in folders for p in Path(folder).glob(f"**/{records.RECORD_FILE}")):
        record = records.read_record(path.parent) or {}
        if record.get("status") != "ok" or (record.get("method") or {}).get("name") != "lora" \
                or record.get("reused_from"):  # a reused run's files are the original's
            continue
        run = f"{record.get('experiment')}/{record.get('run_key')}"
        if (path.parent / FACTORS_FILE).is_file():
            outcome["had them"].append(run)
        elif not (path.parent / WEIGHTS_FILE).is_file():
            outcome["no adapter on this machine"].append(run)
        else:
            with records.claimed(path.parents[3], str(record["experiment"]), str(record["run_key"])) as mine:
                if not mine:
                    outcome["being made"].append(run)
                    continue
                export_factors(path.parent, path.parent / FACTORS_FILE, layers, weights,
                               blocks_of(record.get("model") or {}))
            outcome["exported"].append(run)
    return outcome


def _layer(text: str) -> str | int:
    return int(text) if text.lstrip("-").isdigit() else text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.runs.factors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run folders to search, e.g. results/runs/table_rank")
    parser.add_argument("--layers", default=",".join(DEFAULT_LAYERS), help="first | middle | last | an index, comma-separated")
    parser.add_argument("--weights", default=",".join(DEFAULT_WEIGHTS), help="paper weights, comma-separated")
    args = parser.parse_args(argv)
    from peftrepro.methods.factors import check_option

    option = {"layers": [_layer(x) for x in args.layers.split(",")], "weights": args.weights.split(",")}
    try:
        check_option(option)
        outcome = export_missing(args.folders, option["layers"], option["weights"])
    except PeftReproError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 2
    for what, runs in outcome.items():
        print(f"{what}: {len(runs)}" + "".join(f"\n  {run}" for run in runs if what != "had them"))
    return 1 if outcome["no adapter on this machine"] or outcome["being made"] else 0


if __name__ == "__main__":
    sys.exit(main())
