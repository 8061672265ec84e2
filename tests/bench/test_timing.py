"""peftrepro.runs.timing: statistics, round-robin order, peak memory, device choice."""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftrepro.errors import ConfigError
from peftrepro.runs.timing import (
    PeakMemory,
    TimingStats,
    describe_environment,
    environment,
    paired_ratio,
    resolve_device,
    time_interleaved,
    time_steps,
)

CPU = torch.device("cpu")


def test_stats_summarise_samples_in_milliseconds() -> None:
    stats = TimingStats((0.001, 0.002, 0.006))
    assert stats.n == 3
    assert stats.median_ms == pytest.approx(2.0)
    assert stats.mean_ms == pytest.approx(3.0)
    assert stats.std_ms == pytest.approx(1e3 * statistics.stdev([0.001, 0.002, 0.006]))
    assert stats.min_ms == pytest.approx(1.0)
    assert stats.to_dict()["samples_ms"] == pytest.approx([1.0, 2.0, 6.0])
    assert TimingStats((0.5,)).std_ms == 0.0


def test_time_steps_runs_warmup_untimed_then_iters() -> None:
    calls = []
    stats = time_steps(lambda: calls.append(1), device=CPU, warmup=2, iters=5)
    assert len(calls) == 7 and stats.n == 5


def test_interleaved_alternates_order_every_round() -> None:
    order: list[str] = []
    stats = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                             device=CPU, warmup=1, rounds=3, per_round=2)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    assert stats["a"].n == stats["b"].n == 6


@pytest.mark.parametrize("kwargs", [{"warmup": -1, "rounds": 1}, {"warmup": 0, "rounds": 0},
                                    {"warmup": 0, "rounds": 1, "per_round": 0}])
def test_interleaved_rejects_bad_counts(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        time_interleaved({"a": lambda: None}, device=CPU, **kwargs)


def test_peak_memory_sees_an_allocation_inside_the_block() -> None:
    with PeakMemory(CPU) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    if memory.peak_bytes is None:
        pytest.skip("no /proc peak-RSS reset on this platform")
    assert memory.peak_above_start >= 48 * 2**20


FREED_BUT_RESIDENT = """
import ctypes, json
from pathlib import Path
import torch
from peftrepro.runs.timing import PeakMemory

def resident():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(ln for ln in status if ln.startswith("VmRSS")).split()[1]) * 1024

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
block, freed, kept = 100_000, [], []  # under glibc's mmap threshold: from the heap
for _ in range(4000):  # about 400 MB, each block followed by a small live one that pins the heap
    freed.append(libc.malloc(block))
    ctypes.memset(freed[-1], 1, block)
    kept.append(libc.malloc(1000))
for pointer in freed:
    libc.free(pointer)
before = resident()
with PeakMemory(torch.device("cpu")) as memory:
    pass
print(json.dumps({"freed": len(freed) * block, "before": before, "start": memory.start_bytes,
                  "kind": memory.kind}))
"""


def test_peak_memory_starts_from_live_memory_not_from_what_the_allocator_kept() -> None:
    """Freed blocks pinned in the heap by live neighbours (a replaced fp32 weight, an earlier run of the
    sweep) stay resident until trimmed: the measurement must not count them. The blocks come from libc's
    malloc itself, in a fresh process, so that neither another allocator nor what the tests before left
    in the heap decides the outcome."""
    if not Path("/proc/self/status").is_file() or not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("no /proc resident-set figures or no glibc malloc_trim on this platform")
    done = subprocess.run([sys.executable, "-c", FREED_BUT_RESIDENT], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if found["start"] is None:
        pytest.skip("no /proc peak-RSS reset on this platform")
    assert found["start"] < found["before"] - found["freed"] // 2  # the ~400 MB freed before are not counted
    assert found["kind"] == "cpu_peak_rss_trimmed"  # and the record says so


def test_resolve_device_explains_a_missing_gpu() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("tpu-please")


def test_environment_header_names_versions_and_commit() -> None:
    env = environment(CPU)
    assert env["hardware"]["device"] == "cpu" and "torch" in env["packages"]
    text = "\n".join(describe_environment(env))
    assert "torch " + env["packages"]["torch"] in text and "commit:" in text


def test_paired_ratio_discounts_a_burst_that_hits_one_round() -> None:
    ours = TimingStats((1.0, 1.0, 1.0, 1.0, 1.0))
    reference = TimingStats((2.0, 2.0, 9.0, 2.0, 2.0))  # round 3 hit by another job
    assert paired_ratio(reference, ours, per_round=1) == pytest.approx(2.0)
    assert paired_ratio(TimingStats((2.0, 4.0, 3.0, 3.0)), TimingStats((1.0, 1.0, 1.0, 2.0)),
                        per_round=2) == pytest.approx((3.0 + 2.0) / 2)
