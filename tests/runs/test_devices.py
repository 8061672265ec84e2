"""Which GPU each job of a sweep takes on a machine with several (the device counts are mocked)."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from peftrepro.runs.devices import claimed_device, gpu_preference


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `n` visible GPUs, as far as torch.cuda says."""
    def machine(n: int) -> None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    return machine


def _devices(jobs: list[int], jobs_per_gpu: int, slots, choice: str = "auto") -> list[str]:
    """The devices of `jobs` running at the same time (each keeps its claim until the end)."""
    with ExitStack() as running:
        return [str(running.enter_context(claimed_device(choice, job, jobs_per_gpu, slots, timeout_s=0)))
                for job in jobs]


def test_preference_starts_at_the_job_number_mod_gpus():
    assert [gpu_preference(job, 4)[0] for job in range(6)] == [0, 1, 2, 3, 0, 1]
    assert gpu_preference(5, 3) == [2, 0, 1]


def test_concurrent_jobs_get_a_gpu_each(gpus, tmp_path):
    gpus(4)
    assert _devices([0, 1, 2, 3], 1, tmp_path) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_a_job_whose_gpu_is_busy_takes_the_next_free_one(gpus, tmp_path):
    """Jobs finish in any order: job 2 starts while job 0 still holds GPU 0 and GPU 1 is free."""
    gpus(2)
    assert _devices([0, 2], 1, tmp_path) == ["cuda:0", "cuda:1"]


def test_never_more_jobs_on_a_gpu_than_asked(gpus, tmp_path):
    gpus(2)
    assert _devices([0, 1, 2, 3], 2, tmp_path) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(TimeoutError, match="every slot of the 2 GPUs is taken"):
        _devices([0, 1, 2], 1, tmp_path)


def test_a_finished_job_frees_its_gpu(gpus, tmp_path):
    gpus(2)
    assert _devices([0], 1, tmp_path) == ["cuda:0"]
    assert _devices([0], 1, tmp_path) == ["cuda:0"]  # the first claim was released


@pytest.mark.parametrize("n_gpus,job,choice,expected", [
    (0, 3, "auto", "cpu"),  # no GPU
    (4, 3, "cpu", "cpu"),  # asked for the CPU
    (1, 3, "auto", "cuda"),  # one GPU (SLURM binds one per job): the current device
    (4, None, "auto", "cuda"),  # a single run, not a job of a sweep
    (4, 3, "cuda:2", "cuda:2"),  # asked for one
])
def test_no_claim_where_there_is_nothing_to_share(gpus, tmp_path, n_gpus, job, choice, expected):
    gpus(n_gpus)
    assert _devices([job], 1, tmp_path, choice) == [expected]
    assert not list(tmp_path.iterdir())
