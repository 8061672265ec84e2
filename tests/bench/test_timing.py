"""peftrepro.runs.timing: statistics, round-robin order, peak memory, device choice."""

from __future__ import annotations

import statistics
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


def test_peak_memory_starts_from_live_memory_not_from_what_the_allocator_kept() -> None:
    """Freed blocks pinned in the heap by live neighbours (a replaced fp32 weight, an earlier run of the
    sweep) stay resident until trimmed: the measurement must not count them."""
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no /proc resident-set figures on this platform")

    def resident() -> int:
        return int(next(ln for ln in status.read_text().splitlines() if ln.startswith("VmRSS")).split()[1]) * 1024

    first = torch.ones(2**20)  # freed at once: raises glibc's mmap threshold, so the blocks below go to the heap
    del first
    freed, kept = [], []
    for _ in range(300):
        freed.append(torch.ones(330_000))  # 1.3 MB each, about 400 MB
        kept.append(torch.ones(1000))  # pins the heap between them
    held = sum(t.numel() * 4 for t in freed)
    before = resident()
    del freed
    kept_by_allocator = resident() > before - held // 2
    with PeakMemory(CPU) as memory:
        pass
    if memory.start_bytes is None or not kept_by_allocator:
        pytest.skip("this platform's allocator returned the freed blocks by itself")
    assert memory.start_bytes < before - held // 2  # the ~400 MB freed before are not counted
    assert len(kept) == 300


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
