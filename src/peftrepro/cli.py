"""`peftrepro` console script: the suite's small commands besides the Hydra run entry point.

    peftrepro score e2e PRED REFS   score a prediction file with the official E2E metrics
    peftrepro score runs DIR...     score the unscored runs below DIR (made with scoring=later|auto)
    peftrepro params [--out DIR]    write the trainable-parameter table (paper Tables 3, 4 and 15)
    peftrepro aggregate [...]       records -> paper tables (same options as python -m peftrepro.report.aggregate)
    peftrepro fixtures DIR          write the tiny offline datasets the smoke profile uses
    peftrepro export RUN_DIR OUT --format peft|merged
                                    a run's weights as a peft adapter, or merged into the base model

Training runs go through Hydra: `python -m peftrepro.runs` (or `peftrepro-run`); their errors exit with
status 1, as Hydra reports them. Errors these commands raise on purpose are printed as one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peftrepro.errors import PeftReproError


def _score(args: argparse.Namespace) -> int:
    from peftrepro.metrics.e2e import score_e2e_files

    scores = score_e2e_files(args.predictions, args.references)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        for name, value in scores.items():
            print(f"{name.upper():8s} {'missing' if value is None else f'{value:.4f}'}")
    return 0


def _score_runs(args: argparse.Namespace) -> int:
    from peftrepro.runs import scoring

    return scoring.main([str(folder) for folder in args.folders])


def _params(args: argparse.Namespace) -> int:
    from peftrepro.report import params as params_table

    return params_table.main(["--out", str(args.out)])


def _aggregate(argv: list[str]) -> int:
    from peftrepro.report import aggregate

    return aggregate.main(argv)


def _fixtures(args: argparse.Namespace) -> int:
    from peftrepro.tasks import write_fixtures

    print(write_fixtures(Path(args.directory)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from peftrepro.runs.export import export_run

    print(export_run(args.run_dir, args.out, args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftrepro", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score a prediction file, or the saved predictions of runs")
    score_tasks = score.add_subparsers(dest="task", required=True)
    e2e = score_tasks.add_parser("e2e", help="BLEU, NIST, METEOR, ROUGE-L, CIDEr as the official E2E scorer")
    e2e.add_argument("predictions", type=Path,
                     help="one prediction per line, a .tsv with an 'output' column, or .jsonl with 'prediction'")
    e2e.add_argument("references", type=Path,
                     help="official CSV (mr, ref; .csv or .csv.gz) or e2e-metrics text (blank-line separated)")
    e2e.add_argument("--json", action="store_true", help="print the scores as JSON")
    e2e.set_defaults(handler=_score)
    runs = score_tasks.add_parser("runs", help="score the saved predictions of unscored runs (python -m peftrepro.runs.scoring)")
    runs.add_argument("folders", nargs="+", type=Path, help="runs dirs, experiment folders or run folders")
    runs.set_defaults(handler=_score_runs)

    params = commands.add_parser("params", help="write results/tables/params.{csv,md}")
    params.add_argument("--out", type=Path, default=Path("results/tables"))
    params.set_defaults(handler=_params)

    # listed here for --help only: main hands its arguments to aggregate's own parser
    commands.add_parser("aggregate", help="records -> tables (peftrepro aggregate --help for its options)")

    export = commands.add_parser(
        "export", help="a run's weights for the tools people serve with: a peft adapter, or a merged model",
        description="peft: adapter_config.json + adapter_model.safetensors for PeftModel.from_pretrained(base, OUT) "
                    "(lora and qlora; prompt_tuning, and prefix_embed without infix, as prompt tuning). merged: the "
                    "base model with the update folded in, for AutoModelForCausalLM.from_pretrained(OUT) (lora, ft, "
                    "ft_top, bitfit, magnitude and movement pruning).")
    export.add_argument("run_dir", type=Path, help="a run folder, results/runs/<experiment>/<run_key>")
    export.add_argument("out", type=Path, help="a new (or empty) folder for the exported files")
    export.add_argument("--format", choices=["peft", "merged"], default="peft", help="default: peft")
    export.set_defaults(handler=_export)

    fixtures = commands.add_parser("fixtures", help="write the tiny offline datasets")
    fixtures.add_argument("directory")
    fixtures.set_defaults(handler=_fixtures)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["aggregate"]:  # its options go to its own parser (an argparse REMAINDER refuses them)
            return _aggregate(argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except PeftReproError as error:
        print(f"peftrepro: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
