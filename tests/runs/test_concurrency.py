"""Two sweeps on one results folder at once (two SLURM arrays, a retry while jobs still run): every
run is made once and ends ok, none fails, none trains twice; a run's claim dies with its process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from peftrepro.runs import records

SWEEP = ["-m", "profile=smoke", "task=mnli", "method=lora", "method.r=1,2,4,8", "seed=0", "train.progress=false",
         "hydra/job_logging=default"]


def test_two_sweeps_at_once_make_every_run_once(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "peftrepro.runs", *SWEEP, f"results_dir={tmp_path}"]
    sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    assert all(sweep.returncode == 0 for sweep in sweeps), logs
    made = [key for log in logs for key in re.findall(r"run (\S+) -> ", log)]
    assert len(made) == len(set(made)) == 4, logs  # each run trained by exactly one of the sweeps
    folders = sorted((tmp_path / "runs" / "adhoc").iterdir())
    assert [json.loads((f / records.RECORD_FILE).read_text())["status"] for f in folders] == ["ok"] * 4
    assert not [p for f in folders for p in f.iterdir() if p.name.startswith(".tmp")]


def test_a_claim_is_held_by_one_process_and_released_with_it(tmp_path: Path) -> None:
    with records.claimed(tmp_path, "t", "k") as mine:
        assert mine
        other = subprocess.run([sys.executable, "-c", "import sys; from peftrepro.runs import records; "
                                f"c = records.claimed({str(tmp_path)!r}, 't', 'k'); sys.exit(0 if c.__enter__() else 3)"])
        assert other.returncode == 3  # held here: another process cannot claim it
    with records.claimed(tmp_path, "t", "k") as mine_again:
        assert mine_again  # released with the block (and, by the kernel, with a process that dies)
