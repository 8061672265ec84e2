"""The device a run trains on, and on a machine with several GPUs, the GPU each job of a sweep takes.

`device: auto | cpu | cuda | cuda:N` (conf/config.yaml). A single run, or a machine with one
visible GPU, gets `cuda`: the current device, so CUDA_VISIBLE_DEVICES and SLURM's GPU binding decide.
With several visible GPUs, each job of a multirun (Hydra's job number) claims a GPU slot before it
loads anything and holds it until its record is written: first on GPU (job number mod GPUs), else on
the next GPU with a free slot. At most `jobs_per_gpu` jobs hold slots of one GPU at a time, so a
joblib sweep with n_jobs = GPUs × jobs_per_gpu keeps every GPU busy and never doubles up. (The job
number alone would: jobs finish in any order, so job 2 could join job 0 on GPU 0 while GPU 1 idles.)
A slot is an flock'ed file under <cache_dir>/gpu-slots, which the kernel releases when its process
ends, even a killed one; a job that finds every slot taken (another sweep on the machine) waits.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import torch

log = logging.getLogger(__name__)


def gpu_preference(job: int, n_gpus: int) -> list[int]:
    """The GPUs job `job` tries, in order: its own (job number mod GPUs), then the next ones."""
    return [(job + offset) % n_gpus for offset in range(n_gpus)]


@dataclass
class GpuSlot:
    """One claimed place on a GPU; held while the file stays locked."""

    gpu: int
    handle: IO[str]

    def release(self) -> None:
        self.handle.close()  # closing drops the flock


def claim_gpu_slot(job: int, n_gpus: int, jobs_per_gpu: int, slots_dir: Path, poll_s: float = 5.0,
                   timeout_s: float | None = None) -> GpuSlot:
    """A free slot on the first GPU of `gpu_preference(job)` that has one; waits while none has."""
    import fcntl  # POSIX only; the single-GPU and CPU paths never get here

    slots_dir.mkdir(parents=True, exist_ok=True)
    started, waiting = time.monotonic(), False
    while True:
        for gpu in gpu_preference(job, n_gpus):
            for place in range(jobs_per_gpu):
                # held open: the lock lives as long as the handle
                handle = open(slots_dir / f"gpu-{_visible_id(gpu)}.slot-{place}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                handle.write(f"pid {os.getpid()} job {job}\n")
                handle.flush()
                return GpuSlot(gpu, handle)
        if timeout_s is not None and time.monotonic() - started >= timeout_s:
            raise TimeoutError(f"job {job}: every slot of the {n_gpus} GPUs is taken ({jobs_per_gpu} job(s) per GPU, "
                               f"jobs_per_gpu); lock files in {slots_dir}")
        if not waiting:
            log.info("job %d: all %d GPUs hold %d job(s) each; waiting for a free slot", job, n_gpus, jobs_per_gpu)
            waiting = True
        time.sleep(poll_s)


@contextmanager
def claimed_device(choice: str, job: int | None, jobs_per_gpu: int, slots_dir: Path,
                   timeout_s: float | None = None) -> Iterator[torch.device]:
    """The device for one run, held until the block ends (see the module doc)."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        yield torch.device("cpu")
        return
    if choice.startswith("cuda:") or job is None or torch.cuda.device_count() < 2:
        yield torch.device(choice if choice.startswith("cuda:") else "cuda")
        return
    slot = claim_gpu_slot(job, torch.cuda.device_count(), jobs_per_gpu, slots_dir, timeout_s=timeout_s)
    try:
        torch.cuda.set_device(slot.gpu)  # what code that asks for "the" CUDA device gets
        log.info("job %d: GPU %d", job, slot.gpu)
        yield torch.device(f"cuda:{slot.gpu}")
    finally:
        slot.release()


def _visible_id(index: int) -> str:
    """A GPU's name across processes: its entry in CUDA_VISIBLE_DEVICES, else its index."""
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return visible[index] if index < len(visible) else str(index)
