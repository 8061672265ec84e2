"""Table 1 of the LoRA paper: forward latency of GPT-2 medium with and without adapters.

    python experiments/latency.py --profile paper     # the paper's shapes, 100 trials (GPU)
    python experiments/latency.py --profile smoke     # small shapes, few trials (CPU, ~1 min)
    python experiments/latency.py --from-record results/runs/table_latency/<key>/record.json

Like a training run, a measurement whose record exists (same device, down to the CPU or GPU model,
model, profile, dtype, trials, warm-up and seed) is not repeated: the table is rebuilt from that
record, so on the machine that measured it `make tables` reproduces the committed table; another
machine measures its own. `--force` measures again and replaces it.

A GPT-2 M-shaped model (random weights: latency does not depend on their values) runs one
forward pass, in inference mode, with: no adapter, LoRA merged, LoRA unmerged, Adapter^L and
Adapter^H (our implementations in peftrepro.methods). Variants are timed round-robin, one
forward each per round (`peftrepro.runs.timing.time_interleaved`), so that drift of the machine's
speed (other jobs, clocks) falls on all of them alike. The raw timings go to a record
(`results/runs/table_latency/<run_key>/record.json`) and the table
(`results/tables/table_latency.{csv,md}`) is built from that record alone (`table_from_record`),
beside the paper's numbers from `peftrepro.report.paper`.

Adapter size: Table 1 gives only |Θ| per column (0.5M, 11M, 11M), not the bottleneck r. We pick,
per adapter type and column, the r whose trainable-parameter count is closest to |Θ| (our own
count, LayerNorms included where the method trains them), clamped to [1, d_model]; the table
prints the chosen r and the resulting |Θ|.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from peftrepro.errors import ConfigError, DataError
from peftrepro.methods import apply_method, count_parameters, make_method_config
from peftrepro.runs.envinfo import device_name
from peftrepro.runs.records import atomic_write_text, run_dir, write_record
from peftrepro.runs.timing import (
    DTYPES,
    autocast_if,
    describe_environment,
    environment,
    resolve_device,
    time_interleaved,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "table_latency"


@dataclass(frozen=True)
class Column:
    """One column of Table 1: input shape and the adapters' trainable-parameter budget |Θ|."""

    batch: int
    seq: int
    adapter_params: int
    paper_column: str | None  # column name in peftrepro/data/paper.csv (None: not a paper shape)

    @property
    def label(self) -> str:
        return f"batch {self.batch}, seq {self.seq}, |Θ|={self.adapter_params / 1e6:g}M"


@dataclass(frozen=True)
class Profile:
    columns: tuple[Column, ...]
    trials: int
    warmup: int


PROFILES: dict[str, Profile] = {
    "paper": Profile(
        columns=(Column(32, 512, 500_000, "bs32_seq512"),
                 Column(16, 256, 11_000_000, "bs16_seq256"),
                 Column(1, 128, 11_000_000, "bs1_seq128")),
        trials=100, warmup=10),
    # CPU-sized: the paper's two budgets (0.5M, 11M) at shapes two cores run in seconds
    "smoke": Profile(
        columns=(Column(2, 64, 500_000, None), Column(1, 32, 11_000_000, None)),
        trials=5, warmup=2),
}

MODELS: dict[str, Callable[[], GPT2Config]] = {
    "gpt2-m-shape": lambda: GPT2Config(n_embd=1024, n_layer=24, n_head=16),  # GPT-2 medium, 355M
    "tiny-gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1024, n_positions=1024,
                                    bos_token_id=1023, eos_token_id=1023),  # for tests
}

# variant -> (method name, options); None is the plain model
# the paper's GPT-2 setting (its dropout is idle in eval mode)
LORA_OPTIONS = {"weights": ["W_q", "W_v"], "r": 4, "alpha": 32, "dropout": 0.1}
VARIANTS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "lora_merged": ("lora", LORA_OPTIONS),
    "lora_unmerged": ("lora", LORA_OPTIONS),
    "adapter_l": ("adapter_l", {}),
    "adapter_h": ("adapter_h", {}),
}
# our variant -> the paper's row (the paper's "Fine-Tune/LoRA" row is the no-adapter model)
PAPER_ROWS = {"none": "Fine-Tune/LoRA", "lora_merged": "Fine-Tune/LoRA",
              "adapter_l": "Adapter^L", "adapter_h": "Adapter^H"}
VARIANT_LABELS = {"none": "No adapter (Fine-Tune)", "lora_merged": "LoRA merged",
                  "lora_unmerged": "LoRA unmerged", "adapter_l": "Adapter^L", "adapter_h": "Adapter^H"}


# ---------------------------------------------------------------------------------------------
# Building the variants
# ---------------------------------------------------------------------------------------------

def _trainable_with_rank(config: GPT2Config, method: str, r: int) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = GPT2LMHeadModel(config)
    apply_method(model, make_method_config(method, {"r": r}))
    return count_parameters(model)[0]


def rank_for_budget(config: GPT2Config, method: str, budget: int) -> int:
    """The bottleneck r whose adapter parameter count is closest to `budget`.

    Adapter parameters are affine in r (down/up matrices and the down bias grow with r; the up
    bias and LayerNorms do not), so two counts give the line; r is clamped to [1, d_model].
    """
    at_1, at_2 = _trainable_with_rank(config, method, 1), _trainable_with_rank(config, method, 2)
    slope = at_2 - at_1
    r = round((budget - (at_1 - slope)) / slope)
    return min(max(r, 1), config.n_embd)


def build_variant(base: nn.Module, variant: str, adapter_rank: dict[str, int]) -> tuple[nn.Module, dict]:
    """A copy of `base` with the variant's method applied (the base itself for 'none')."""
    spec = VARIANTS[variant]
    if spec is None:
        return base, {"method": None, "r": None, "adapter_params": 0}
    method, options = spec
    options = dict(options)
    if method in adapter_rank:
        options["r"] = adapter_rank[method]
    # The frozen weights stay shared with the base (deepcopy's memo): a variant costs only what its method
    # adds, not another copy of the model (five copies of GPT-2 M took 10+ GB). Merging writes into W,
    # so the merged variant gets weights of its own.
    memo = {} if variant == "lora_merged" else {id(p): p for p in base.parameters()}
    model = copy.deepcopy(base, memo)
    applied = apply_method(model, make_method_config(method, options))
    if variant == "lora_merged":
        applied.merge()
    model.eval()
    return model, {"method": method, "r": options.get("r"), "adapter_params": count_parameters(model)[0]}


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def forward_pass(model: nn.Module, input_ids: torch.Tensor, device: torch.device,
                 dtype: torch.dtype | None) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode(), autocast_if(device, dtype):
            model(input_ids=input_ids, use_cache=False)
    return forward


def study_config(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What a measurement is: equal configs give the same record (bar the timings' noise)."""
    profile = PROFILES[args.profile]
    return {"profile": args.profile, "model": args.model, "dtype": args.dtype,
            "trials": args.trials or profile.trials, "warmup": profile.warmup if args.warmup is None else args.warmup,
            "seed": args.seed, "device": device.type, "device_name": device_name(device)}


def run_key(study: dict[str, Any]) -> str:
    """The measurement's key: the study and the very device (a CPU or GPU model, not just "cpu"), so a
    measurement is reused on the same hardware only."""
    device = re.sub(r"[^A-Za-z0-9]+", "_", str(study.get("device_name", ""))).strip("_")
    return "-".join(part for part in (study["device"], device, study["model"], study["profile"], study["dtype"]) if part)


def finished_record(args: argparse.Namespace) -> Path | None:
    """The record of an earlier measurement of the same study, if there is one."""
    study = study_config(args, resolve_device(args.device))
    path = run_dir(args.results_dir, EXPERIMENT, run_key(study)) / "record.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = record.get("status") == "ok" and all((record.get("config") or {}).get(k) == v for k, v in study.items())
    return path if same else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the study; return the record (raw samples per cell, env, config)."""
    device = resolve_device(args.device)
    profile = PROFILES[args.profile]
    study = study_config(args, device)
    trials, warmup = study["trials"], study["warmup"]
    config = MODELS[args.model]()
    torch.manual_seed(args.seed)
    with torch.device(device):
        base = GPT2LMHeadModel(config).eval()
    cells = []
    for column in profile.columns:
        ranks = {m: rank_for_budget(config, m, column.adapter_params) for m in ("adapter_l", "adapter_h")}
        built = {name: build_variant(base, name, ranks) for name in VARIANTS}
        models = {name: model for name, (model, _) in built.items()}
        input_ids = torch.randint(0, config.vocab_size, (column.batch, column.seq), device=device)
        forwards = {name: forward_pass(model, input_ids, device, DTYPES[args.dtype])
                    for name, model in models.items()}
        stats = time_interleaved(forwards, device=device, warmup=warmup, rounds=trials)
        for name, (_, info) in built.items():
            cells.append({"variant": name, "column": asdict(column), **info, **stats[name].to_dict()})
        del models, built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[latency] {column.label}: " + ", ".join(
            f"{n} {c['mean_ms']:.1f}ms" for n, c in ((c["variant"], c) for c in cells[-len(VARIANTS):])),
            flush=True)
    env = environment(device)
    return {
        "schema_version": 1, "run_key": run_key(study), "experiment": EXPERIMENT, "status": "ok", "error": None,
        "config": {**study, "columns": [asdict(c) for c in profile.columns], "lora": LORA_OPTIONS,
                   "model_config": {k: getattr(config, k) for k in ("n_embd", "n_layer", "n_head", "vocab_size")}},
        "seed": args.seed, "profile": args.profile,
        "model": {"name": args.model, "model_type": "gpt2", "source": "random init (timing only)"},
        "latency": cells,
        "env": env,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------
# Record -> table
# ---------------------------------------------------------------------------------------------

def _paper_cell(row: str | None, column: str | None) -> tuple[float | None, float | None]:
    from peftrepro.report.paper import load_paper, printed_spread

    if row is None or column is None:
        return None, None
    frame = load_paper()
    hit = frame[(frame["table"] == "table1") & (frame["row"] == row) & (frame["column"] == column)]
    if hit.empty:
        return None, None
    return float(hit["value"].iloc[0]), printed_spread(hit["printed"].iloc[0])


def table_from_record(record: dict[str, Any]) -> pd.DataFrame:
    """One row per (column, variant): our mean ± std and overhead, and the paper's."""
    if record.get("experiment") != EXPERIMENT or "latency" not in record:
        raise DataError(f"not a {EXPERIMENT} record (experiment={record.get('experiment')!r}); "
                        "pass the record.json written by experiments/latency.py")
    rows = []
    for column_cells in _group_by_column(record["latency"]):
        base = next(c for c in column_cells if c["variant"] == "none")
        paper_base, _ = _paper_cell(PAPER_ROWS["none"], column_cells[0]["column"]["paper_column"])
        for cell in column_cells:
            column = cell["column"]
            paper_mean, paper_std = _paper_cell(PAPER_ROWS.get(cell["variant"]), column["paper_column"])
            q1, q3 = _quartiles(cell["samples_ms"])
            overhead = _round_overheads(cell["samples_ms"], base["samples_ms"])
            o1, o3 = median_interval(overhead)
            rows.append({
                "batch": column["batch"], "seq": column["seq"], "paper_budget": column["adapter_params"],
                "variant": cell["variant"], "r": cell["r"], "adapter_params": cell["adapter_params"],
                "mean_ms": cell["mean_ms"], "std_ms": cell["std_ms"], "median_ms": cell["median_ms"],
                "q1_ms": q1, "q3_ms": q3, "trials": cell["n"], "overhead_pct": statistics.median(overhead),
                "overhead_low_pct": o1, "overhead_high_pct": o3, "resolved": not o1 <= 0 <= o3,
                "paper_mean_ms": paper_mean, "paper_std_ms": paper_std,
                "paper_overhead_pct": (100 * (paper_mean / paper_base - 1)
                                       if paper_mean is not None and paper_base else None),
            })
    return pd.DataFrame(rows)


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the interquartile range: the spread shown beside a median)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _outer_ranks(n: int) -> int:
    """How many order statistics each end of the median's interval leaves out: the most that keep a
    binomial(n, 1/2)'s tails beyond them under 2.5 % each (none up to 8 values)."""
    from scipy.stats import binom

    return max(int(binom.ppf(0.025, n, 0.5)) - 1, 0)


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics `_outer_ranks` in from
    each end, the narrowest such interval covering it at least 95 % of the time from 6 values on; with fewer,
    their whole range, which covers it less often (`median_coverage`: 93.75 % with 5)."""
    ordered, k = sorted(values), _outer_ranks(len(values))
    return ordered[k], ordered[len(ordered) - 1 - k]


def median_coverage(n: int) -> float:
    """The exact coverage of `median_interval` of n values: P(k < B < n - k) for B ~ binomial(n, 1/2), the
    median lying between the (k+1)-th and the (n-k)-th value (5 values: their whole range, 93.75 %)."""
    from scipy.stats import binom

    k = _outer_ranks(n)
    return float(binom.cdf(n - k - 1, n, 0.5) - binom.cdf(k, n, 0.5))


def _round_overheads(samples: list[float], base: list[float]) -> list[float]:
    """The overhead over the no-adapter pass of each round (%): variants are timed round-robin, one
    pass each per round, so a round's pair shares the machine's state at that moment."""
    return [100 * (ours / theirs - 1) for ours, theirs in zip(samples, base)]


def _group_by_column(cells: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for cell in cells:
        key = (cell["column"]["batch"], cell["column"]["seq"], cell["column"]["adapter_params"])
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _ms(mean: float | None, std: float | None, overhead: float | None) -> str:
    """A paper cell: mean ± std (and its overhead), as the paper prints it."""
    if mean is None:
        return "–"
    text = f"{mean:.1f} ± {std:.1f}" if std is not None else f"{mean:.1f}"
    return text + (f" ({overhead:+.1f}%)" if overhead is not None and abs(overhead) > 0.05 else "")


def _ours(cell: pd.Series) -> str:
    """Our cell: median (interquartile range) ms, and the overhead's median over rounds with its interval
    (at the coverage its trials allow), or "no difference resolvable" where that interval covers 0."""
    text = f"{cell['median_ms']:.1f} ({cell['q1_ms']:.1f}–{cell['q3_ms']:.1f})"
    if cell["variant"] == "none":
        return text
    spread = (f"{100 * median_coverage(int(cell['trials'])):.3g} %: {_bound(cell['overhead_low_pct'])} … "
              f"{_bound(cell['overhead_high_pct'])} %")
    if not cell["resolved"]:
        return f"{text}, no difference resolvable ({spread})"
    return f"{text}, {cell['overhead_pct']:+.1f} % ({spread})"


def _bound(percent: float) -> str:
    """An interval's end, "+3.7"; one that would print as ±0.0 gets the digits that show its side of 0."""
    return f"{percent:+.1f}" if abs(percent) >= 0.05 or percent == 0 else f"{percent:+.2g}"


def render_markdown(table: pd.DataFrame, record: dict[str, Any], record_path: str) -> str:
    """Table 1 layout: variants as rows, shapes as columns; ours, then the paper's."""
    config = record["config"]
    shapes = list(dict.fromkeys(zip(table["batch"], table["seq"], table["paper_budget"])))
    with_paper = bool(table["paper_mean_ms"].notna().any())
    header = ["Variant"] + [f"B{b}×S{s}, \\|Θ\\|≈{p / 1e6:g}M: ours" for b, s, p in shapes]
    if with_paper:
        header += [f"B{b}×S{s}: paper" for b, s, p in shapes]
    lines = [
        "# Table 1: inference latency of one forward pass, GPT-2 M shape (ms)",
        "",
        f"Generated by `python experiments/latency.py --profile {config['profile']}` from `{record_path}`.",
        "",
        *describe_environment(record["env"]),
        f"- model: {record['model']['name']} {config['model_config']} (random weights), dtype {config['dtype']}, "
        f"inference mode, no KV cache, logits included",
        f"- trials: {config['trials']} per cell after {config['warmup']} warm-up passes, variants timed "
        "round-robin. Ours: the median (interquartile range) over trials; the overhead is the median over rounds "
        "of each round's pass against that round's no-adapter pass, with a distribution-free interval of that "
        "median (the narrowest between order statistics that covers it at least 95 % of the time, or with 5 or "
        f"fewer trials their whole range; {100 * median_coverage(config['trials']):.3g} % with {config['trials']} "
        "trials), and \"no difference resolvable\" where the interval covers 0 (noise is not reported as an "
        "overhead)" + (". The paper's: mean ± std, as it prints them" if with_paper else ""),
        f"- LoRA: {config['lora']}; adapter r chosen per column so that |Θ| is closest to the paper's budget "
        "(values in the CSV)",
        "- paper: NVIDIA Quadro RTX8000 (Table 1; its 'Fine-Tune/LoRA' row is shown for both our 'no adapter' "
        "and 'LoRA merged'); overheads are relative to the no-adapter mean of the same column" if with_paper else
        "- paper: not shown: its Table 1 measured other batch × sequence shapes than these; `--profile paper` "
        "measures the paper's shapes and shows its numbers beside ours",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for variant in VARIANTS:
        ours, paper = [], []
        for batch, seq, budget in shapes:
            cell = table[(table["batch"] == batch) & (table["seq"] == seq)
                         & (table["paper_budget"] == budget) & (table["variant"] == variant)].iloc[0]
            r = f" r={int(cell['r'])}" if pd.notna(cell["r"]) and variant.startswith("adapter") else ""
            ours.append(_ours(cell) + r)
            paper.append(_ms(_none(cell["paper_mean_ms"]), _none(cell["paper_std_ms"]),
                             _none(cell["paper_overhead_pct"])))
        lines.append("| " + " | ".join([VARIANT_LABELS[variant], *ours, *(paper if with_paper else [])]) + " |")
    return "\n".join(lines) + "\n"


def _none(value: Any) -> Any:
    return None if value is None or pd.isna(value) else float(value)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_outputs(record: dict[str, Any], results_dir: Path, record_path: Path | None = None) -> dict[str, Path]:
    """Write (if needed) the record, then the CSV and Markdown table built from it."""
    if record_path is None:
        record_path = write_record(run_dir(results_dir, EXPERIMENT, record["run_key"]), record)
    table = table_from_record(record)
    csv_path = results_dir / "tables" / "table_latency.csv"
    md_path = results_dir / "tables" / "table_latency.md"
    shown = _relative(record_path)
    atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.5g"))
    atomic_write_text(md_path, render_markdown(table, record, shown))
    return {"record": record_path, "csv": csv_path, "md": md_path}


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke",
                        help="paper: Table 1 shapes, 100 trials; smoke: small shapes for a CPU (default)")
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-m-shape")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="fp32 like the paper; bf16/fp16 run under autocast")
    parser.add_argument("--trials", type=int, default=None, help="override the profile's trials")
    parser.add_argument("--warmup", type=int, default=None, help="override the profile's warm-up passes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--from-record", type=Path, default=None,
                        help="rebuild the table from an existing record.json instead of measuring")
    parser.add_argument("--force", action="store_true",
                        help="measure even when a record of the same study exists (it is replaced)")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    reused = None
    if args.from_record is not None:
        try:
            record = json.loads(args.from_record.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read latency record {args.from_record}: {error}") from error
        paths = write_outputs(record, args.results_dir, record_path=args.from_record)
    elif not args.force and (reused := finished_record(args)) is not None:
        print(f"skip: {_relative(reused)} holds this measurement (--force measures again); table rebuilt from it")
        paths = write_outputs(json.loads(reused.read_text()), args.results_dir, record_path=reused)
    else:
        paths = write_outputs(measure(args), args.results_dir)
    print(paths["md"].read_text())
    written = [path for path in paths.values() if path not in (reused, args.from_record)]
    print("wrote " + ", ".join(_relative(path) for path in written))
    return paths


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, DataError) as error:
        sys.exit(f"error: {error}")
