"""Run records -> the paper's tables, beside the paper's own numbers.

    python -m peftrepro.aggregate [--table NAME|all] [--runs results/runs] [--out results/tables]
                                  [--profile mini] [--seeds 0,1,2] [--strict] [--no-plots]

Reads `results/runs/**/record.json` and nothing else (tables are a pure function of the records
plus `peftrepro/data/paper.csv`). Per run key the latest record (`created_at`) wins; unreadable
records are reported and skipped. Each table is written as `<out>/<table>.csv` (wide, numeric:
mean, std, n and the paper's value per paper column) and `<out>/<table>.md` (laid out like the
paper's table, each cell "ours mean ± std (n) · paper value"), with what is missing or failed
listed under it, the paper's choices and ambiguities, and the paper's claims checked on our
numbers (`peftrepro.claims`). Our raw metrics are scaled to the paper's printed unit
(`peftrepro.paper.PAPER_SCALE`: accuracies, BLEU, METEOR and ROUGE-L ×100).

Exit status: 0 when every table was written; with --strict, 1 when some expected cell is missing,
failed or short of seeds (cells whose runs recorded status "not_applicable", e.g. BitFit on a
model without biases, show "n/a": listed, not an error).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from peftrepro.paper import load_paper, to_paper_unit
from peftrepro.records import NOT_APPLICABLE, UNSCORED

# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

RECORD_FILE = "record.json"
REQUIRED_KEYS = ("run_key", "experiment", "status", "created_at")
PRIMARY_METRIC = {"wikisql": "lf_accuracy", "mnli": "accuracy_m"}
E2E_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")
WEIGHT_ORDER = ("W_q", "W_k", "W_v", "W_o", "W_gate", "W_up", "W_down")
PARAMS = "trainable_params"  # row/column key of parameter counts (ours in millions, like the paper)


@dataclass(frozen=True)
class Record:
    """The fields of one record.json the tables need (the full dict stays in `raw`)."""

    path: Path
    run_key: str
    experiment: str
    status: str
    created_at: pd.Timestamp
    seed: int | None
    profile: str
    task: str
    method: Mapping[str, Any]
    metrics: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def error(self) -> str:
        error = self.raw.get("error") or {}
        return f"{error.get('type', 'Error')}: {error.get('message', 'no message recorded')}".strip()

    @property
    def error_type(self) -> str | None:
        return (self.raw.get("error") or {}).get("type")

    @property
    def trainable(self) -> int | None:
        return (self.raw.get("params") or {}).get("trainable")

    @property
    def hardware(self) -> str:
        """Where it ran and in which precision, e.g. "GPU: NVIDIA H100 (bf16 autocast)"."""
        info = (self.raw.get("env") or {}).get("hardware") or {}
        if info.get("gpu"):
            where, on_gpu = f"GPU: {info['gpu']}", True
        elif info:
            where, on_gpu = f"CPU: {info.get('cpu', '?')}, {info.get('cpu_count', '?')} cores", False
        else:
            return "unrecorded hardware"
        precision = self.get("train.precision") or "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU
        return f"{where} ({'bf16 autocast' if precision == 'bf16' or (precision == 'auto' and on_gpu) else 'fp32'})"

    def get(self, dotted: str) -> Any:
        """A value of the resolved config by dotted path (`method.alpha`), or None."""
        node: Any = self.raw.get("config") or {}
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str


def parse_record(path: Path, data: Any) -> Record:
    """A Record from a decoded record.json; ValueError names what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError("top level is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    created_at = pd.to_datetime(data["created_at"], utc=True)  # ValueError when unparseable
    method = data.get("method") or (data.get("config") or {}).get("method") or {}
    task = data.get("task")
    if isinstance(task, Mapping):  # tolerate a whole task config in place of its name
        task = task.get("name")
    return Record(path=path, run_key=str(data["run_key"]), experiment=str(data["experiment"]),
                  status=str(data["status"]), created_at=created_at, seed=data.get("seed"),
                  profile=str(data.get("profile") or "unknown"), task=str(task or "unknown"),
                  method=method, metrics=data.get("metrics") or {}, raw=data)


def load_records(runs_dir: Path) -> tuple[list[Record], list[Problem], int]:
    """Every readable record under runs_dir, latest per run key; plus problems and #superseded."""
    records: list[Record] = []
    problems: list[Problem] = []
    for path in sorted(runs_dir.glob(f"**/{RECORD_FILE}")):
        try:
            records.append(parse_record(path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            problems.append(Problem(path, f"unreadable record, skipped: {error}"))
    latest = latest_per_run_key(records)
    return latest, problems, len(records) - len(latest)


def latest_per_run_key(records: Sequence[Record]) -> list[Record]:
    """One record per run key: the one created last (ties: the later path in sort order)."""
    if not records:
        return []
    frame = pd.DataFrame({"key": [r.run_key for r in records],
                          "created_at": [r.created_at for r in records],
                          "index": range(len(records))})
    kept = frame.sort_values(["created_at", "index"], kind="stable").drop_duplicates("key", keep="last")
    return [records[i] for i in sorted(kept["index"])]


# ----------------------------------------------------------------------------------------------
# Placing a record in a table
# ----------------------------------------------------------------------------------------------


def lora_ranks(method: Mapping[str, Any]) -> dict[str, int]:
    """LoRA's weight -> rank mapping: `ranks` when given, else every weight in `weights` at `r`."""
    if method.get("ranks"):
        return {str(k): int(v) for k, v in dict(method["ranks"]).items()}
    return {str(w): int(method.get("r", 0)) for w in method.get("weights") or []}


def weights_label(weights: Iterable[str]) -> str:
    order = {name: i for i, name in enumerate(WEIGHT_ORDER)}
    return ",".join(sorted(weights, key=lambda w: (order.get(w, len(order)), w)))


@dataclass(frozen=True)
class Arm:
    """One method configuration of a table: a row of Tables 3 and 4."""

    key: str
    label: str
    paper_row: str | None
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, method: Mapping[str, Any]) -> bool:
        if method.get("name") != self.method:
            return False
        for option, wanted in self.options.items():
            if option == "ranks":
                if lora_ranks(method) != dict(wanted):
                    return False
            elif method.get(option) != wanted:
                return False
        return True


@dataclass(frozen=True)
class Obs:
    """One value a record contributes to one cell (paper units; None with a reason if absent)."""

    row: str
    column: str
    value: float | None
    problem: str | None = None


SCORE_LATER_HINT = ("predictions saved, not scored yet (scoring=later): run `python -m peftrepro.scoring "
                    "results/runs` or the table's make target on a machine with Java")


def _metric_obs(record: Record, row: str, column: str, metric: str) -> Obs:
    if record.status == UNSCORED:
        return Obs(row, column, None, SCORE_LATER_HINT)
    if record.status != "ok":
        why = "not applicable" if record.status == NOT_APPLICABLE else "run failed"
        return Obs(row, column, None, f"{why} ({record.error})")
    raw = record.metrics.get(metric)
    if raw is None:
        return Obs(row, column, None, f"metric {metric} not in the record (e.g. METEOR without Java)")
    return Obs(row, column, to_paper_unit(metric, float(raw)))


def _params_obs(record: Record, row: str, column: str) -> Obs:
    count = record.trainable
    if record.status not in ("ok", UNSCORED) or count is None:  # unscored: trained, its count is known
        return Obs(row, column, None, "no parameter count (run failed)")
    return Obs(row, column, count / 1e6)


# ----------------------------------------------------------------------------------------------
# Table specifications (mirror conf/experiment/<name>.yaml; tests check the two agree)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    key: str
    labels: tuple[str, ...]  # one label per index column of the paper's layout


@dataclass(frozen=True)
class TableSpec:
    name: str                # = experiment name = results/runs/<name>/ = results/tables/<name>.*
    title: str
    paper_source: str        # which paper table(s) the "paper" values come from
    corner: tuple[str, ...]  # header(s) of the row-label column(s)
    rows: tuple[Axis, ...]
    columns: tuple[Axis, ...]
    observe: Callable[[Record], list[Obs] | None]  # None: the record has no place in this table
    paper_ref: Callable[[str, str], tuple[str, str, str] | None]
    static_rows: tuple[tuple[str, tuple[str, ...]], ...] = ()  # e.g. Table 5's "Rank r"
    choices: tuple[tuple[str, str], ...] = ()  # (what, dotted config path) read from the records
    notes: tuple[str, ...] = ()
    digits: Mapping[str, int] = field(default_factory=dict)  # decimals per column key (default 1)


COMMON_CHOICES = (
    ("model", "model.name"),
    ("epochs", "train.epochs"),
    ("learning rate", "train.lr"),
    ("batch size", "train.batch_size"),
    ("train examples (limit)", "task.max_train_examples"),
    ("eval examples (limit)", "task.max_eval_examples"),
    ("evaluate every epoch, report the best", "train.eval_every_epoch"),
)
ACCURACY_NOTES = (
    "Paper numbers are GPT-3 175B (96 layers, d_model 12288); ours come from a much smaller model, "
    "so compare the ordering of cells, not their level.",
    "WikiSQL: logical-form exact-match accuracy (the paper's metric; its normalisation is UNCONFIRMED, "
    "see paper-reference.md §7); MultiNLI: matched-validation accuracy. The paper reports the best "
    "validation performance of each run (D.4); ours do when 'evaluate every epoch' above is true.",
    "LoRA α: the paper sets α to the first r tried and never tunes it (§4.1; its GPT-3 value is not "
    "given): we keep one α for every r (see the α line above), so the scale α/r shrinks as r grows.",
)
TASK_CHOICES = (
    ("LoRA α", "method.alpha"),
    ("LoRA init of A (paper: Gaussian; official code: kaiming-uniform)", "method.init"),
    ("LoRA dropout", "method.dropout"),
    ("eval split", "task.eval_split"),
    ("WikiSQL split policy (the offline data has no train split)", "task.split_policy"),
    ("MNLI prompt (the paper's is not published)", "task.prompt_template"),
    ("beam size", "decoding.num_beams"),
)


def _task_row(task: str) -> str:
    return {"wikisql": "WikiSQL (±0.5%)", "mnli": "MultiNLI (±0.1%)"}[task]


# Table 5: seven weight-type settings at an equal budget (18M in GPT-3: r × #matrices constant).
WEIGHT_TYPE_COLUMNS: tuple[tuple[str, int], ...] = (
    ("W_q", 8), ("W_k", 8), ("W_v", 8), ("W_o", 8), ("W_q,W_k", 4), ("W_q,W_v", 4), ("W_q,W_k,W_v,W_o", 2))


def _weight_type_observe(record: Record) -> list[Obs] | None:
    if record.method.get("name") != "lora" or record.task not in PRIMARY_METRIC:
        return None
    ranks = lora_ranks(record.method)
    if len(set(ranks.values())) != 1:
        return None
    column = weights_label(ranks)
    if (column, next(iter(ranks.values()))) not in WEIGHT_TYPE_COLUMNS:
        return None
    return [_metric_obs(record, record.task, column, PRIMARY_METRIC[record.task]),
            _params_obs(record, PARAMS, column)]


def _weight_type_paper(row: str, column: str) -> tuple[str, str, str] | None:
    rank = dict(WEIGHT_TYPE_COLUMNS)[column]
    return ("table5", f"{column} r={rank}", row)


TABLE_WEIGHT_TYPE = TableSpec(
    name="table_weight_type",
    title="Table 5: which weight matrices to adapt, at an equal trainable-parameter budget",
    paper_source="arXiv v2 Table 5 (paper-reference.md §3)",
    corner=("Weight Type",),
    static_rows=(("Rank r", tuple(str(r) for _, r in WEIGHT_TYPE_COLUMNS)),),
    rows=(Axis(PARAMS, ("# Trainable Parameters",)), Axis("wikisql", (_task_row("wikisql"),)),
          Axis("mnli", (_task_row("mnli"),))),
    columns=tuple(Axis(w, (w,)) for w, _ in WEIGHT_TYPE_COLUMNS),
    observe=_weight_type_observe,
    paper_ref=_weight_type_paper,
    choices=COMMON_CHOICES + TASK_CHOICES,
    notes=ACCURACY_NOTES + (
        "Equal budget: r × (number of adapted matrices) is the same in every column, as in the paper. "
        "In GPT-3 every matrix is d_model × d_model so that also fixes the count (18,874,368). In models "
        "with grouped-query attention W_k and W_v are narrower, so the counts differ: see the "
        "'# Trainable Parameters' row (ours).",
        "The paper prints W_q r=8 MultiNLI as 91.0 here but 90.7 in Table 6 (same run): both are in "
        "paper.csv; this table shows Table 5's.",
    ),
    digits={PARAMS: 3},
)

# Table 6: rank r for three weight-type settings.
RANK_WEIGHTS = ("W_q", "W_q,W_v", "W_q,W_k,W_v,W_o")
RANKS = (1, 2, 4, 8, 64)


def _rank_observe(record: Record) -> list[Obs] | None:
    if record.method.get("name") != "lora" or record.task not in PRIMARY_METRIC:
        return None
    ranks = lora_ranks(record.method)
    weights, values = weights_label(ranks), set(ranks.values())
    if weights not in RANK_WEIGHTS or len(values) != 1 or next(iter(values)) not in RANKS:
        return None
    return [_metric_obs(record, f"{record.task}|{weights}", f"r={values.pop()}",
                        PRIMARY_METRIC[record.task])]


def _rank_paper(row: str, column: str) -> tuple[str, str, str]:
    task, weights = row.split("|")
    return ("table6", f"{weights} {column}", task)


TABLE_RANK = TableSpec(
    name="table_rank",
    title="Table 6: validation accuracy vs LoRA rank r",
    paper_source="arXiv v2 Table 6 (paper-reference.md §3)",
    corner=("Dataset", "Weight Type"),
    rows=tuple(Axis(f"{task}|{w}", (_task_row(task), w)) for task in ("wikisql", "mnli") for w in RANK_WEIGHTS),
    columns=tuple(Axis(f"r={r}", (f"r={r}",)) for r in RANKS),
    observe=_rank_observe,
    paper_ref=_rank_paper,
    choices=COMMON_CHOICES + TASK_CHOICES,
    notes=ACCURACY_NOTES + (
        "The paper's own inconsistencies: W_q r=8 MultiNLI is 90.7 here but 91.0 in Table 5; "
        "W_q,W_v r=64 WikiSQL is 73.5 here but 73.6 in Table 15. This table shows Table 6's values.",
    ),
)

# Table 3: E2E, every method. Adapter sizes are back-solved from the GPT-2 M counts (see the
# experiment file): the paper never states them.
E2E_ARMS = (
    Arm("ft", "FT", "GPT-2 M (FT)", "ft"),
    Arm("adapter_l_small", "Adapter^L (r=6)", "GPT-2 M (Adapter^L, 0.37M)", "adapter_l", {"r": 6}),
    Arm("adapter_l_large", "Adapter^L (r=224)", "GPT-2 M (Adapter^L, 11.09M)", "adapter_l", {"r": 224}),
    Arm("adapter_h", "Adapter^H (r=112)", "GPT-2 M (Adapter^H)", "adapter_h", {"r": 112}),
    Arm("ft_top2", "FT^Top2", "GPT-2 M (FT^Top2)", "ft_top", {"k": 2}),
    Arm("prefix_layer", "PreLayer (l_p=10, l_i=0)", "GPT-2 M (PreLayer)", "prefix_layer",
        {"prefix_length": 10, "infix_length": 0}),
    Arm("lora", "LoRA (r_q=r_v=4)", "GPT-2 M (LoRA)", "lora", {"ranks": {"W_q": 4, "W_v": 4}}),
)


def _arm_of(record: Record, arms: Sequence[Arm]) -> Arm | None:
    return next((arm for arm in arms if arm.matches(record.method)), None)


def _e2e_observe(record: Record) -> list[Obs] | None:
    arm = _arm_of(record, E2E_ARMS)
    if record.task != "e2e" or arm is None:
        return None
    return [_params_obs(record, arm.key, PARAMS)] + [
        _metric_obs(record, arm.key, metric, metric) for metric in E2E_METRICS]


def _arms_paper(table: str, arms: Sequence[Arm]) -> Callable[[str, str], tuple[str, str, str] | None]:
    by_key = {arm.key: arm for arm in arms}

    def paper_ref(row: str, column: str) -> tuple[str, str, str] | None:
        paper_row = by_key[row].paper_row
        return None if paper_row is None else (table, paper_row, column)

    return paper_ref


E2E_CHOICES = (
    ("beam size", "decoding.num_beams"),
    ("length penalty", "decoding.length_penalty"),
    ("no-repeat n-gram", "decoding.no_repeat_ngram_size"),
    ("max new tokens", "decoding.max_new_tokens"),
    ("label smoothing", "train.label_smoothing"),
)
TABLE_E2E = TableSpec(
    name="table_e2e",
    title="Table 3: E2E NLG Challenge (test set), every method",
    paper_source="arXiv v2 Table 3, GPT-2 M rows (paper-reference.md §1)",
    corner=("Model & Method",),
    rows=tuple(Axis(arm.key, (arm.label,)) for arm in E2E_ARMS),
    columns=(Axis(PARAMS, ("# Trainable Params",)), Axis("bleu", ("BLEU",)), Axis("nist", ("NIST",)),
             Axis("meteor", ("MET",)), Axis("rouge_l", ("ROUGE-L",)), Axis("cider", ("CIDEr",))),
    observe=_e2e_observe,
    paper_ref=_arms_paper("table3", E2E_ARMS),
    choices=COMMON_CHOICES + E2E_CHOICES + (("LoRA α", "method.alpha"),),
    notes=(
        "Paper numbers are GPT-2 M (the paper's GPT-2 L rows are in paper.csv). BLEU, METEOR and ROUGE-L "
        "×100, NIST and CIDEr raw, as the paper prints them; ours from the official e2e-metrics "
        "definitions, scaled the same way.",
        "Rows the paper marks * (FT, Adapter^L, FT^Top2, PreLayer) are numbers it cites from Li & Liang "
        "(2021), not its own runs; ours are all our runs with one shared recipe.",
        "Length penalty: Table 11 says 0.9 for E2E, the official README command uses 0.8 (see the "
        "'length penalty' line above for ours).",
        "The paper's LoRA count 0.35M does not match its formula (2×48×1024×4 = 0.39M); adapter "
        "bottleneck sizes are not stated: ours are back-solved from the printed counts "
        "(Adapter^L r=6 -> 0.37M, r=224 -> 11.09M with one adapter and LayerNorm per block in GPT-2 M; "
        "Adapter^H r=112 ≈ the same budget with two adapters per block).",
    ),
    digits={PARAMS: 3, "nist": 2, "cider": 2},
)

# Table 4: PEFT methods on WikiSQL and MultiNLI. Paper values: Table 15's row for exactly our
# configuration (equal to Table 4 except LoRA, whose Table 4 rows are best-of), BitFit from Table 4.
METHOD_ARMS = (
    Arm("ft", "FT", "Fine-Tune", "ft"),
    Arm("bitfit", "BitFit", None, "bitfit"),
    Arm("prefix_embed", "PreEmbed (l_p=256, l_i=8)", "PrefixEmbed l_p=256,l_i=8", "prefix_embed",
        {"prefix_length": 256, "infix_length": 8}),
    Arm("prefix_layer", "PreLayer (l_p=8, l_i=8)", "PrefixLayer l_p=8,l_i=8", "prefix_layer",
        {"prefix_length": 8, "infix_length": 8}),
    Arm("adapter_h_r1", "Adapter^H (r=1)", "Adapter^H r=1", "adapter_h", {"r": 1}),
    Arm("adapter_h_r8", "Adapter^H (r=8)", "Adapter^H r=8", "adapter_h", {"r": 8}),
    Arm("lora_r1", "LoRA (r_q=r_v=1)", "LoRA r_q=r_v=1", "lora", {"ranks": {"W_q": 1, "W_v": 1}}),
    Arm("lora_r8", "LoRA (r_q=r_v=8)", "LoRA r_q=r_v=8", "lora", {"ranks": {"W_q": 8, "W_v": 8}}),
)


def _methods_observe(record: Record) -> list[Obs] | None:
    arm = _arm_of(record, METHOD_ARMS)
    if record.task not in PRIMARY_METRIC or arm is None:
        return None
    return [_params_obs(record, arm.key, PARAMS),
            _metric_obs(record, arm.key, record.task, PRIMARY_METRIC[record.task])]


def _methods_paper(row: str, column: str) -> tuple[str, str, str] | None:
    if row == "bitfit":
        return ("table4", "GPT-3 (BitFit)", column)
    return _arms_paper("table15", METHOD_ARMS)(row, column)


TABLE_METHODS = TableSpec(
    name="table_methods",
    title="Table 4: PEFT methods compared on WikiSQL and MultiNLI",
    paper_source="arXiv v2 Table 15 rows of the same configurations (= Table 4 for all but LoRA), "
                 "BitFit from Table 4 (paper-reference.md §2, §4)",
    corner=("Model & Method",),
    rows=tuple(Axis(arm.key, (arm.label,)) for arm in METHOD_ARMS),
    columns=(Axis(PARAMS, ("# Trainable Params",)), Axis("wikisql", ("WikiSQL Acc. (%)",)),
             Axis("mnli", ("MNLI-m Acc. (%)",))),
    observe=_methods_observe,
    paper_ref=_methods_paper,
    choices=COMMON_CHOICES + TASK_CHOICES + (("prefix reparameterisation", "method.reparameterize"),),
    notes=ACCURACY_NOTES + (
        "Table 4's LoRA rows are best-of several configurations (4.7M: 73.4 / 91.7, the MNLI from r_v=2; "
        "37.7M: 74.0 / 91.6, the WikiSQL from r_q=r_k=r_v=r_o=4); we show Table 15's value for exactly "
        "our configuration instead. SAMSum is not replicated.",
        "BitFit trains biases only: a model without bias vectors (Llama family, e.g. SmolLM2) cannot run "
        "it; its run records status not_applicable and the row shows n/a with the reason. "
        "The paper's 14.2M has no stated formula (UNCONFIRMED).",
        "The paper's PrefixLayer counts are 4–8% above its own formula L × d_model × (l_p + l_i).",
    ),
    digits={PARAMS: 3},
)

TABLES: dict[str, TableSpec] = {spec.name: spec for spec in
                                (TABLE_WEIGHT_TYPE, TABLE_RANK, TABLE_E2E, TABLE_METHODS)}


# ----------------------------------------------------------------------------------------------
# Summarising: one line per cell
# ----------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("row", "column", "mean", "std", "n", "seeds", "values", "problems",
                   "paper", "paper_printed", "paper_ref", "status", "hardware")


@dataclass
class TableResult:
    spec: TableSpec
    cells: pd.DataFrame        # SUMMARY_COLUMNS, indexed by (row, column)
    records: list[Record]      # the records placed in this table
    unplaced: list[Record]     # records of this experiment that match no cell
    expected_seeds: list[int]
    problems: list[Problem]    # unreadable record files under runs/<table>/
    superseded: int            # records replaced by a later record of the same run key
    replaced: int = 0          # runs replaced by a later run of the same cell and seed (other run key)
    other_profiles: list[str] = field(default_factory=list)  # profiles with records, not tabulated here

    def stats(self, row: str, column: str) -> pd.Series:
        return self.cells.loc[(row, column)]

    @property
    def incomplete(self) -> pd.DataFrame:
        return self.cells[self.cells["status"].isin(["missing", "failed", "partial", "unscored"])]


def summarise(spec: TableSpec, records: Sequence[Record], expected_seeds: Sequence[int] | None,
              problems: Sequence[Problem] = (), superseded: int = 0,
              paper: pd.DataFrame | None = None) -> TableResult:
    """Cells of `spec` from `records` (already filtered to one experiment/profile)."""
    paper = load_paper() if paper is None else paper
    paper_index = paper.set_index(["table", "row", "column"])
    placed, unplaced, rows = [], [], []
    for record in records:
        observations = spec.observe(record)
        if observations is None:
            unplaced.append(record)
            continue
        placed.append(record)
        rows += [dict(row=o.row, column=o.column, value=o.value, problem=o.problem, seed=record.seed,
                      status=record.status, error_type=record.error_type, created_at=record.created_at,
                      key=record.run_key, task=record.task, hardware=record.hardware) for o in observations]
    columns = ["row", "column", "value", "problem", "seed", "status", "error_type", "created_at", "key", "task",
               "hardware"]
    obs = pd.DataFrame(rows, columns=columns)
    # One value per cell, seed and task (parameter cells gather both tasks): a run whose config
    # changed since (a new run key for the same cell, e.g. after a code or profile change)
    # replaces the older one, never averages with it.
    latest = obs.sort_values("created_at", kind="stable").drop_duplicates(
        ["row", "column", "seed", "task"], keep="last")
    replaced_keys = set(obs["key"]) - set(latest["key"])
    placed = [r for r in placed if r.run_key not in replaced_keys]
    obs = latest
    seeds = sorted(expected_seeds) if expected_seeds else sorted({r.seed for r in placed if r.seed is not None})
    lines = [_cell(spec, axis_row.key, axis_col.key, obs, seeds, paper_index)
             for axis_row in spec.rows for axis_col in spec.columns]
    cells = pd.DataFrame(lines, columns=list(SUMMARY_COLUMNS)).set_index(["row", "column"], drop=False)
    return TableResult(spec, cells, placed, unplaced, seeds, list(problems), superseded, len(replaced_keys))


def _cell(spec: TableSpec, row: str, column: str, obs: pd.DataFrame, seeds: Sequence[int],
          paper_index: pd.DataFrame) -> dict[str, Any]:
    ref = spec.paper_ref(row, column)
    paper_value, paper_printed = None, None
    if ref is not None and ref in paper_index.index:
        hit = paper_index.loc[ref]
        paper_value, paper_printed = float(hit["value"]), str(hit["printed"])
    mine = obs[(obs["row"] == row) & (obs["column"] == column)]
    good = mine[mine["value"].notna()]
    values = good["value"].astype(float)
    got = sorted({int(s) for s in good["seed"].dropna()})
    problems = sorted(set(mine.loc[mine["value"].isna(), "problem"].dropna()))
    status = _status(row, column, mine, good, got, seeds)
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return dict(row=row, column=column, mean=float(values.mean()) if len(values) else math.nan, std=std,
                n=len(values), seeds=got, values=list(values), problems=problems, paper=paper_value,
                paper_printed=paper_printed, paper_ref=" / ".join(ref) if ref else None, status=status,
                hardware=sorted(set(good["hardware"])))


# a cell whose runs all have one of these record statuses shows it (rendered "n/a" / "—")
FINAL_CELL_STATUS = {NOT_APPLICABLE: "n/a", UNSCORED: "unscored"}


def _status(row: str, column: str, mine: pd.DataFrame, good: pd.DataFrame, got: list[int],
            seeds: Sequence[int]) -> str:
    if mine.empty:
        return "missing"
    if good.empty:  # every run of the cell is "not_applicable" (e.g. BitFit, no biases), "unscored" or failed
        statuses = set(mine["status"])
        return FINAL_CELL_STATUS.get(statuses.pop(), "failed") if len(statuses) == 1 else "failed"
    if row == PARAMS or column == PARAMS:  # counts: one per run, the seed spread is irrelevant
        return "ok"
    return "partial" if set(seeds) - set(got) else "ok"


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def format_count(millions: float) -> str:
    count = millions * 1e6
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    if count >= 1e3:
        return f"{count / 1e3:.3g}K"
    return f"{count:.0f}"


def format_cell(spec: TableSpec, cell: pd.Series, n_expected: int) -> str:
    paper = f" · paper {cell['paper_printed']}" if cell["paper_printed"] is not None else ""
    if cell["status"] in ("missing", "failed", "n/a", "unscored"):
        return ("n/a" if cell["status"] == "n/a" else "—") + paper
    if PARAMS in (cell["row"], cell["column"]):
        return " / ".join(format_count(v) for v in sorted(set(cell["values"]))) + paper
    digits = spec.digits.get(cell["column"], spec.digits.get(cell["row"], 1))
    text = f"{cell['mean']:.{digits}f}"
    if cell["n"] > 1:
        text += f" ± {cell['std']:.{digits}f}"
    of = f" of {n_expected}" if cell["status"] == "partial" else ""
    return f"{text} (n={cell['n']}{of}){paper}"


def layout(result: TableResult) -> pd.DataFrame:
    """The table as the paper lays it out: one string per cell."""
    spec = result.spec
    lines = [dict(zip(spec.corner, _pad(labels, len(spec.corner))), **dict(zip(
        [c.labels[0] for c in spec.columns], values))) for labels, values in spec.static_rows]
    for axis_row in spec.rows:
        line = dict(zip(spec.corner, axis_row.labels))
        for axis_col in spec.columns:
            cell = result.stats(axis_row.key, axis_col.key)
            line[axis_col.labels[0]] = format_cell(spec, cell, len(result.expected_seeds))
        lines.append(line)
    return pd.DataFrame(lines, columns=list(spec.corner) + [c.labels[0] for c in spec.columns])


def _pad(label: str, width: int) -> tuple[str, ...]:
    return (label,) + ("",) * (width - 1)


def wide_csv(result: TableResult) -> pd.DataFrame:
    """Numeric wide form: the paper's rows; per paper column its mean, std, n, paper value, status."""
    spec = result.spec
    lines = []
    for axis_row in spec.rows:
        line: dict[str, Any] = dict(zip(spec.corner, axis_row.labels))
        for axis_col in spec.columns:
            cell = result.stats(axis_row.key, axis_col.key)
            name = axis_col.labels[0]
            line |= {f"{name} mean": cell["mean"], f"{name} std": cell["std"], f"{name} n": cell["n"],
                     f"{name} paper": cell["paper"], f"{name} status": cell["status"]}
        lines.append(line)
    return pd.DataFrame(lines)


def distinct(values: Iterable[Any]) -> list[str]:
    """The distinct non-empty values as sorted strings."""
    return sorted({str(v) for v in values if v not in (None, "")})


def commit_labels(records: Iterable[Record]) -> list[str]:
    """The commits the records name, `abcdef1234 (dirty)` when the tree had uncommitted changes."""
    return distinct(f"{g.get('commit', '?')[:10]}{' (dirty)' if g.get('dirty') else ''}"
                    for r in records for g in [((r.raw.get("env") or {}).get("git") or {})])


def eval_size(record: Record) -> str:
    """How much a run evaluated. E2E's evaluated rows are references, several per MR: count both."""
    notes = record.raw.get("eval_notes") or {}
    if record.task == "e2e" and "mrs" in notes:
        return f"{notes['mrs']} eval MRs with {notes.get('references')} references"
    return f"{(record.raw.get('data') or {}).get('eval_examples')} eval"


def header_lines(result: TableResult) -> list[str]:
    records = result.records
    models = distinct(f"{(r.raw.get('model') or {}).get('name')} ({(r.raw.get('model') or {}).get('source')})"
                      for r in records)
    data = distinct(f"{r.task}: {d.get('train_examples')} train / {eval_size(r)} ({d.get('eval_split')})"
                    for r in records for d in [r.raw.get("data") or {}])
    commits = commit_labels(records)
    ok = sum(r.status == "ok" for r in records)
    return [
        f"- Profile: {', '.join(distinct(r.profile for r in records)) or '— (no records)'}"
        + (f" (records of profile(s) {', '.join(result.other_profiles)} also exist: --profile NAME)"
           if result.other_profiles else ""),
        f"- Model: {'; '.join(models) or '—'}",
        f"- Data: {'; '.join(data) or '—'}",
        f"- Commit(s): {', '.join(commits) or '—'}",
        f"- Seeds expected: {', '.join(map(str, result.expected_seeds)) or '—'}",
        f"- Ran on: {'; '.join(f'{where} ({n} runs)' for where, n in _count(r.hardware for r in records)) or '—'}",
        f"- Records: {ok} ok, {len(records) - ok} failed; left out: {result.superseded} older record(s) of "
        f"the same run key, {result.replaced} older run(s) of the same cell and seed under another run key "
        f"(config or code changed since), {len(result.problems)} unreadable file(s)",
        f"- Paper values: {result.spec.paper_source}",
        "- Each cell: our mean ± std over seeds (n = number of seeds) · the paper's printed value.",
    ]


def _count(values: Iterable[str]) -> list[tuple[str, int]]:
    return sorted(Counter(values).items())


def incomplete_lines(result: TableResult) -> list[str]:
    spec = result.spec
    row_label = {a.key: " / ".join(a.labels) for a in spec.rows}
    col_label = {a.key: a.labels[0] for a in spec.columns}
    lines = []
    for _, cell in result.cells[result.cells["status"] != "ok"].iterrows():
        where = f"{row_label[cell['row']]} × {col_label[cell['column']]}"
        if cell["status"] == "missing":
            why = "no record (run the table's make target)"
        elif cell["status"] == "partial":
            lacking = sorted(set(result.expected_seeds) - set(cell["seeds"]))
            why = f"seed(s) {lacking} missing" + (f": {'; '.join(cell['problems'])}" if cell["problems"] else "")
        else:
            why = "; ".join(cell["problems"]) or cell["status"]
        lines.append(f"- {cell['status'].upper()} {where}: {why}")
    metric_cells = result.cells[(result.cells["row"] != PARAMS) & (result.cells["column"] != PARAMS)]
    for _, cell in metric_cells[metric_cells["hardware"].map(len) > 1].iterrows():
        lines.append(f"- MIXED HARDWARE {row_label[cell['row']]} × {col_label[cell['column']]}: its seeds ran on "
                     f"{' and '.join(cell['hardware'])}; the spread includes the difference")
    for record in result.unplaced:
        lines.append(f"- NOT PLACED {record.path}: task {record.task}, method {dict(record.method)} "
                     "matches no cell of this table (changed experiment file?)")
    for problem in result.problems:
        lines.append(f"- UNREADABLE {problem.path}: {problem.reason}")
    return lines


def choice_lines(result: TableResult) -> list[str]:
    """Each choice as recorded in the runs' resolved configs, per task where tasks differ."""
    lines = []
    for what, path in result.spec.choices:
        per_task: dict[str, set[str]] = {}
        for record in result.records:
            value = record.get(path)
            if value is not None:
                per_task.setdefault(record.task, set()).add(json.dumps(value, default=str, ensure_ascii=False))
        value_sets = {frozenset(values) for values in per_task.values()}
        if not per_task:
            shown = "not recorded"
        elif len(value_sets) == 1:
            shown = ", ".join(sorted(next(iter(value_sets))))
        else:
            shown = "; ".join(f"{task}: {', '.join(sorted(values))}" for task, values in sorted(per_task.items()))
        lines.append(f"- {what} (`{path}`): {shown}")
    return lines + [f"- {note}" for note in result.spec.notes]


def render_markdown(result: TableResult, claim_lines: Sequence[str]) -> str:
    spec = result.spec
    parts = [f"# {spec.title} (`{spec.name}`)", "", *header_lines(result), "",
             layout(result).to_markdown(index=False), ""]
    incomplete = incomplete_lines(result)
    parts += ["## Missing, failed or partial cells", ""]
    parts += incomplete or ["None: every cell has every expected seed."]
    parts += ["", "## Paper's claims on our numbers", "", *claim_lines, ""]
    parts += ["## Choices and ambiguities", "", *choice_lines(result), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def select_profile(records: Sequence[Record], profile: str | None) -> tuple[list[Record], str | None]:
    """Records of one profile: the given one, else that of the latest record (never mixed)."""
    if not records:
        return [], profile
    chosen = profile or max(records, key=lambda r: r.created_at).profile
    return [r for r in records if r.profile == chosen], chosen


def build_table(spec: TableSpec, runs_dir: Path, profile: str | None = None,
                seeds: Sequence[int] | None = None) -> TableResult:
    records, problems, superseded = load_records(runs_dir)
    of_table = [r for r in records if r.experiment == spec.name]
    mine, chosen = select_profile(of_table, profile)
    # an unreadable record has no readable experiment: its folder (runs/<experiment>/...) says where it belongs
    own_problems = [p for p in problems if p.path.relative_to(runs_dir).parts[0] == spec.name]
    result = summarise(spec, mine, seeds, own_problems, superseded)
    result.other_profiles = sorted({r.profile for r in of_table} - {chosen})
    return result


def write_table(result: TableResult, out_dir: Path, plots: bool = True) -> list[Path]:
    from peftrepro import claims  # local: claims imports this module's names

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{result.spec.name}.csv", out_dir / f"{result.spec.name}.md"
    wide_csv(result).to_csv(csv_path, index=False)
    md_path.write_text(render_markdown(result, claims.render(claims.evaluate(result))), encoding="utf-8")
    written = [csv_path, md_path]
    if plots:
        from peftrepro import plots as plotting

        written += plotting.plot(result, out_dir)
    return written


def parse_seeds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise SystemExit(f"--seeds must be a comma-separated list of integers, e.g. 0,1,2 (got {text!r})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.aggregate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="all", choices=["all", *TABLES])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument("--profile", default=None, help="profile to tabulate (default: the latest record's)")
    parser.add_argument("--seeds", default=None, help="seeds every cell should have, e.g. 0,1,2")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a cell is missing, failed or partial")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    names = list(TABLES) if args.table == "all" else [args.table]
    incomplete = 0
    for name in names:
        result = build_table(TABLES[name], args.runs, args.profile, parse_seeds(args.seeds))
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
