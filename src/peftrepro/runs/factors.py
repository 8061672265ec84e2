"""Keep LoRA's factors of runs that finished without them: `python -m peftrepro.runs.factors FOLDER...`

A run keeps `lora_factors.safetensors` when its `lora_factors` option selects it (the Table 4, 5, 6
and QLoRA experiment files: W_q,W_v at r=4, 8 and 64). For such runs made without the option, this
exports the same file from the run's `adapter.safetensors`, which a finished LoRA run keeps on the
machine that trained it unless it ran with `keep_weights=false` (weights are not committed). It
holds each run's claim while it writes (records.claimed), skips runs that already have the file,
and says which runs it could not serve and why. Factors exported here carry no `a_drift` (A as
initialised is known only while training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from peftrepro.errors import PeftReproError
from peftrepro.runs import records

# what the Table 4, 5, 6 and QLoRA experiment files keep (their `lora_factors`)
DEFAULT_OPTION = {"layers": ["middle", "last"], "weights": ["W_q", "W_v"], "ranks": [4, 8, 64]}


def export_missing(folders: Sequence[Path], option: Mapping[str, Any]) -> dict[str, list[str]]:
    """Export the factors of every finished LoRA run under `folders` that the `lora_factors` option
    selects (methods.factors.keeps_factors) and that lacks them; the runs by outcome."""
    from peftrepro.methods import make_method_config
    from peftrepro.methods.checkpoint import WEIGHTS_FILE
    from peftrepro.methods.factors import FACTORS_FILE, blocks_of, export_factors, keeps_factors

    outcome: dict[str, list[str]] = {"exported": [], "had them": [], "no adapter on this machine": [],
                                     "being made": []}
    for path in sorted(p for folder in folders for p in Path(folder).glob(f"**/{records.RECORD_FILE}")):
        record = records.read_record(path.parent) or {}
        method = dict(record.get("method") or {})
        if record.get("status") != "ok" or method.pop("name", None) != "lora" or record.get("reused_from") \
                or not keeps_factors(option, make_method_config("lora", method).rank_per_weight()):
            continue  # a reused run's files are the original's
        run = f"{record.get('experiment')}/{record.get('run_key')}"
        if (path.parent / FACTORS_FILE).is_file():
            outcome["had them"].append(run)
        elif not (path.parent / WEIGHTS_FILE).is_file():
            outcome["no adapter on this machine"].append(run)
        else:
            # runs/<experiment>/<key>/record.json: the results folder, whose lock a run being made holds
            with records.claimed(path.parents[3], str(record["experiment"]), str(record["run_key"])) as mine:
                if not mine:
                    outcome["being made"].append(run)
                    continue
                export_factors(path.parent, path.parent / FACTORS_FILE, option["layers"], option["weights"],
                               blocks_of(record.get("model") or {}))
            outcome["exported"].append(run)
    return outcome


def _items(text: str) -> list[str | int]:
    return [int(item) if item.lstrip("-").isdigit() else item for item in text.split(",") if item]


def main(argv: Sequence[str] | None = None) -> int:
    from peftrepro.methods.factors import check_option

    parser = argparse.ArgumentParser(prog="python -m peftrepro.runs.factors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run folders to search, e.g. results/runs/table_rank")
    parser.add_argument("--layers", default=",".join(DEFAULT_OPTION["layers"]),
                        help="first | middle | last | an index, comma-separated")
    parser.add_argument("--weights", default=",".join(DEFAULT_OPTION["weights"]),
                        help="the runs that adapt exactly these paper weights keep them")
    parser.add_argument("--ranks", default=",".join(map(str, DEFAULT_OPTION["ranks"])),
                        help="... at one of these ranks ('' for any)")
    args = parser.parse_args(argv)
    option = {"layers": _items(args.layers), "weights": _items(args.weights), "ranks": _items(args.ranks) or None}
    try:
        check_option(option)
        outcome = export_missing(args.folders, option)
    except PeftReproError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 2
    for what, runs in outcome.items():
        print(f"{what}: {len(runs)}" + "".join(f"\n  {run}" for run in runs if what != "had them"))
    return 1 if outcome["no adapter on this machine"] or outcome["being made"] else 0


if __name__ == "__main__":
    sys.exit(main())
