"""Timing helpers shared by the benchmarks: warm-up, device sync, robust statistics, peak memory.

Every number the benchmarks print is wall-clock time around a call with the device synchronised
before and after, so GPU work is counted where it runs: `time_steps` for one contender,
`time_interleaved` for several timed round-robin, `paired_ratio` for their speed ratio. Memory
comes from `PeakMemory` (CUDA: the caching allocator's peak; CPU: the process's resident-set
high-water mark, reset per measurement through /proc). `environment()` describes the machine and
the package versions, so that a figure is never separated from what produced it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; anything else must be a device torch understands."""
    from peftrepro.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r} is not a torch device ({error}); use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r} asked for CUDA but torch sees no GPU; use --device cpu")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock time covers the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class TimingStats:
    """Per-call wall-clock samples (seconds) and their summaries in milliseconds."""

    samples_s: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples_s)

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.samples_s)

    @property
    def mean_ms(self) -> float:
        return 1e3 * statistics.fmean(self.samples_s)

    @property
    def std_ms(self) -> float:
        """Sample standard deviation (n-1); 0 for a single sample."""
        return 1e3 * statistics.stdev(self.samples_s) if self.n > 1 else 0.0

    @property
    def min_ms(self) -> float:
        return 1e3 * min(self.samples_s)

    def summary(self) -> dict[str, float | int]:
        return {"n": self.n, "median_ms": self.median_ms, "mean_ms": self.mean_ms,
                "std_ms": self.std_ms, "min_ms": self.min_ms}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "samples_ms": [1e3 * s for s in self.samples_s]}


def time_steps(step: Callable[[], object], *, device: torch.device, warmup: int,
               iters: int) -> TimingStats:
    """Run `step` `warmup` times untimed, then time `iters` calls one by one.

    Each call is bracketed by device syncs: the GPU queue is empty when the clock starts and the
    call's kernels have finished when it stops (the cost of the sync itself is microseconds).
    """
    from peftrepro.errors import ConfigError

    if warmup < 0 or iters < 1:
        raise ConfigError(f"timing needs warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    for _ in range(warmup):
        step()
    synchronize(device)
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return TimingStats(tuple(samples))


def time_interleaved(steps: dict[str, Callable[[], object]], *, device: torch.device, warmup: int,
                     rounds: int, per_round: int = 1) -> dict[str, TimingStats]:
    """Time several contenders against each other, round-robin.

    Each contender first gets `warmup` untimed calls; then, `rounds` times, each runs `per_round`
    timed calls in turn, the order reversed every other round (A B, B A, ...). Drift of the
    machine's speed (other jobs on shared cores, clocks, thermals) then falls on every contender
    alike instead of on whichever ran last, which matters more than the mean's precision when
    the question is a ratio.
    """
    from peftrepro.errors import ConfigError

    if warmup < 0 or rounds < 1 or per_round < 1:
        raise ConfigError(f"timing needs warmup >= 0, rounds >= 1, per_round >= 1; "
                          f"got {warmup}, {rounds}, {per_round}")
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else order[::-1]:
            for _ in range(per_round):
                start = time.perf_counter()
                steps[name]()
                synchronize(device)
                samples[name].append(time.perf_counter() - start)
    return {name: TimingStats(tuple(values)) for name, values in samples.items()}


def paired_ratio(numerator: TimingStats, denominator: TimingStats, per_round: int) -> float:
    """Median over the rounds of `time_interleaved` of (numerator / denominator) within a round.

    The two were timed back to back in each round, so a burst of load from other jobs that hits
    a round inflates both (and cancels) or one (and moves only that round's ratio, which the
    median then discounts). Steadier than a ratio of overall medians on a shared machine.
    """
    def round_means(stats: TimingStats) -> list[float]:
        samples = stats.samples_s
        return [statistics.fmean(samples[i:i + per_round]) for i in range(0, len(samples), per_round)]

    return statistics.median(n / d for n, d in zip(round_means(numerator), round_means(denominator)))


def _proc_status_bytes(field: str) -> int | None:
    if not _PROC_STATUS.exists():
        return None
    match = re.search(rf"{field}:\s+(\d+) kB", _PROC_STATUS.read_text())
    return int(match.group(1)) * 1024 if match else None


def release_freed_memory() -> bool:
    """Hand memory the process freed back to the OS, so that a resident-set measurement starts from what
    is live: glibc keeps freed small and mid-sized blocks (a model's fp32 weights replaced by 4-bit ones,
    an earlier run of the same sweep) in its heap, where they count in the RSS until reused. Python has
    no binding for malloc_trim, hence ctypes. Whether it ran: elsewhere than glibc only the garbage
    collector does."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols, which hold libc's on Linux
    except (OSError, AttributeError):
        return False
    return True


def _reset_rss_high_water() -> bool:
    """Linux resets VmHWM to the current RSS when "5" is written to clear_refs (since 4.0)."""
    try:
        _PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory while the `with` block runs: `peak_bytes`, and `peak_above_start` (the peak
    minus what was already held on entry, i.e. what the block itself needed at its worst).

    CUDA: `torch.cuda.max_memory_allocated` after a reset (tensors only; the allocator's cache
    and the CUDA context are not counted). CPU: the process's peak resident set size (VmHWM),
    reset on entry after freed memory is handed back to the OS (release_freed_memory), so that it
    starts from what is live; the allocator's own caching and fragmentation still count, so on CPU
    the figure is indicative. None where unavailable (CPU outside Linux).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # on CPU "cpu_peak_rss_trimmed" once entered, where freed memory could be handed back first
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self.start_bytes: int | None = None
        self.peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            if release_freed_memory():  # the record says which measurement it holds
                self.kind = "cpu_peak_rss_trimmed"
            if _reset_rss_high_water():
                self.start_bytes = _proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.start_bytes is not None:
            self.peak_bytes = _proc_status_bytes("VmHWM")

    @property
    def peak_above_start(self) -> int | None:
        if self.peak_bytes is None or self.start_bytes is None:
            return None
        return max(self.peak_bytes - self.start_bytes, 0)


@contextlib.contextmanager
def autocast_if(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision when `dtype` is bf16/fp16, a no-op for fp32 (None)."""
    if dtype is None or dtype == torch.float32:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Environment: hardware and versions written beside every figure
# ---------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, Any]:
    """Record-style `env` (packages, git, hardware, python: `peftrepro.runs.envinfo`) plus timing facts.

    Adds what changes a timing but not a training result: the device timed, and on CUDA whether
    fp32 matmuls may use TF32.
    """
    from peftrepro.runs.envinfo import environment as run_environment

    env = run_environment()
    env["hardware"]["device"] = str(device)
    if device.type == "cuda":
        env["hardware"].update(gpu=torch.cuda.get_device_name(device),
                               tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env


def describe_environment(env: dict[str, Any]) -> list[str]:
    """Markdown bullet lines for a results file header."""
    hw, git = env["hardware"], env.get("git", {})
    accelerator = f"{hw['gpu']} (CUDA {hw.get('cuda')})" if hw.get("gpu") else "none (CPU run)"
    shown = ("torch", "transformers", "peft", "peft-repro")
    packages = ", ".join(f"{name} {env['packages'][name]}" for name in shown if name in env["packages"])
    commit = git.get("commit") or "unknown (not a git checkout or no commit yet)"
    dirty = " (worktree has uncommitted changes)" if git.get("dirty") else ""
    return [
        f"- accelerator: {accelerator}",
        f"- CPU: {hw.get('cpu')}, torch threads: {hw.get('torch_threads')}",
        f"- versions: python {env.get('python')}, {packages}",
        f"- commit: {commit}{dirty}",
    ]
