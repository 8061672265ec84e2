"""The data extract carried to the lent GPU (experiments/gpu_session.py `pack` -> .gpu/data) makes the
`mini` runs of Tables 5 and 6 (MNLI, WikiSQL) and 3 (E2E) select exactly the examples they select from
the full data.

Run with `pytest tests/tasks/test_gpu_data_extract.py -m realdata` (PEFTREPRO_DATA_ROOT or /work/shared/data).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peftrepro.tasks import make_task

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def extract(gpu_session, real_data_root, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("gpu") / "data"
    gpu_session.build_data_extract(real_data_root, target, profile="mini")
    return target


@pytest.mark.parametrize("task", ["mnli", "wikisql", "e2e"])
def test_mini_runs_select_the_same_examples_from_the_extract(gpu_session, real_data_root, extract, task) -> None:
    options = gpu_session.task_options("mini", task)
    full, small = make_task(task, real_data_root, options), make_task(task, extract, options)
    for split, limit in ((options["train_split"], options["max_train_examples"]),
                         (options["eval_split"], options["max_eval_examples"])):
        expected = full.load_split(split, limit)
        assert expected, f"{task}/{split}: nothing selected"
        assert small.load_split(split, limit) == expected, f"{task}/{split} differs"


def test_the_extract_is_small_enough_to_carry(extract) -> None:
    size = sum(f.stat().st_size for f in extract.rglob("*") if f.is_file())
    assert size < 3 * 2**20  # beside a 47 MiB GGUF half, within one command's 64 MiB
