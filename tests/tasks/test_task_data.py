"""Data root resolution, readers' errors, fixtures, the task registry and the hub fallback."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest

from peftrepro.errors import ConfigError, DataError
from peftrepro.tasks import TASKS, make_task, write_fixtures
from peftrepro.tasks.data import DATA_ROOT_ENV, resolve_data_root


def test_data_root_prefers_argument_then_env_then_hub(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(DATA_ROOT_ENV, str(other))
    assert resolve_data_root(tmp_path) == tmp_path
    assert resolve_data_root(None) == other
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert resolve_data_root(None) is None


def test_missing_data_root_names_the_fix(tmp_path):
    with pytest.raises(DataError, match=f"not a directory.*{DATA_ROOT_ENV}"):
        make_task("e2e", tmp_path / "nowhere")


def test_fixtures_are_deterministic(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(write_fixtures(tmp_path / "a")) == digest(write_fixtures(tmp_path / "b"))


def test_fixture_layout_matches_the_real_data(fixture_root):
    expected = {"e2e/train.csv.gz", "e2e/dev.csv.gz", "e2e/test.csv.gz", "wikisql/dev.jsonl.gz",
                "wikisql/test.jsonl.gz", "wikisql/test.tables.jsonl.gz", "mnli/train_subset.jsonl.gz",
                "mnli/validation_matched.jsonl.gz", "mnli/validation_mismatched.jsonl.gz"}
    assert {str(p.relative_to(fixture_root)) for p in fixture_root.rglob("*.gz")} == expected


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_split_of_every_task_loads_from_fixtures(fixture_root, name):
    task = make_task(name, fixture_root)
    for split in (task.options.train_split, task.options.eval_split):
        records = task.load_split(split)
        assert 10 <= len(records) <= 60


def test_unknown_task_and_option_list_the_valid_ones(fixture_root):
    with pytest.raises(ConfigError, match="valid tasks: \\['e2e', 'mnli', 'wikisql'\\]"):
        make_task("squad", fixture_root)
    with pytest.raises(ConfigError, match="unknown option.*'beam'.*valid options:.*separator"):
        make_task("e2e", fixture_root, {"beam": 4})
    with pytest.raises(ConfigError, match="unknown split 'validation'"):
        make_task("e2e", fixture_root, {"eval_split": "validation"})
    with pytest.raises(ConfigError, match="max_train_examples"):
        make_task("mnli", fixture_root, {"max_train_examples": 0})


def test_hydra_style_name_key_is_accepted(fixture_root):
    assert make_task("mnli", fixture_root, {"name": "mnli", "max_length": 64}).options.max_length == 64


# ----------------------------------------------------------------------------- broken files


def _copy(fixture_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(fixture_root, root)
    return root


def _rewrite(path: Path, text: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)


@pytest.mark.parametrize("task, split, relative, content, message", [
    ("e2e", "test", "e2e/test.csv.gz", None, "file not found"),
    ("e2e", "test", "e2e/test.csv.gz", "", "file is empty"),
    ("e2e", "test", "e2e/test.csv.gz", '"mr","text"\n"a","b"\n', "line 1: header .* lacks column.*'ref'"),
    ("e2e", "test", "e2e/test.csv.gz", '"mr","ref"\n"name[A]","A is a pub."\n"name[B]",""\n', "line 3: missing or empty"),
    ("mnli", "validation_matched", "mnli/validation_matched.jsonl.gz",
     '{"premise": "a", "hypothesis": "b", "label": 0}\n{"premise": "a", "hyp\n', "line 2: not valid JSON"),
    ("mnli", "validation_matched", "mnli/validation_matched.jsonl.gz",
     '{"premise": "a", "hypothesis": "b"}\n', "line 1: missing or empty field.*label"),
    ("wikisql", "validation", "wikisql/test.tables.jsonl.gz", "[1, 2]\n", "line 1: expected a JSON object"),
])
def test_broken_files_raise_one_clear_error(fixture_root, tmp_path, task, split, relative, content, message):
    root = _copy(fixture_root, tmp_path)
    path = root / relative
    if content is None:
        path.unlink()
    else:
        _rewrite(path, content)
    with pytest.raises(DataError, match=message) as error:
        make_task(task, root).load_split(split)
    assert str(path) in str(error.value) and DATA_ROOT_ENV in str(error.value)


def test_a_corrupt_gzip_is_a_data_error(fixture_root, tmp_path):
    root = _copy(fixture_root, tmp_path)
    (root / "mnli" / "train_subset.jsonl.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="train_subset.jsonl.gz: cannot be read"):
        make_task("mnli", root).load_split("train")


# ----------------------------------------------------------------------------- hub fallback


class FakeHub:
    """Stands in for the download only: `datasets.load_dataset` returns in-memory Datasets."""

    def __init__(self, tables: dict[str, list[dict]]):
        self.tables, self.calls = tables, []

    def __call__(self, path, name=None, split=None, revision=None):
        import datasets

        self.calls.append({"path": path, "name": name, "split": split, "revision": revision})
        return datasets.Dataset.from_list(self.tables[split])


def test_hub_fallback_e2e(monkeypatch):
    import datasets

    hub = FakeHub({"test": [{"meaning_representation": "name[Aromi], eatType[pub]",
                             "human_reference": "Aromi is a pub."}] * 2})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    rows = make_task("e2e", None).load_split("test")
    assert rows == [{"mr": "name[Aromi], eatType[pub]", "ref": "Aromi is a pub."}] * 2
    assert hub.calls == [{"path": "tuetschek/e2e_nlg", "name": None, "split": "test",
                          "revision": "refs/convert/parquet"}]


def test_hub_fallback_mnli_drops_unlabelled_rows(monkeypatch):
    import datasets

    row = {"premise": "p", "hypothesis": "h", "idx": 0}
    hub = FakeHub({"validation_matched": [{**row, "label": 2}, {**row, "label": -1}],
                   "validation_mismatched": [{**row, "label": 1}]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    rows = make_task("mnli", None).load_split("validation")
    assert [(r["label_text"], r["subset"]) for r in rows] == [("contradiction", "matched"), ("neutral", "mismatched")]
    assert {(c["path"], c["name"]) for c in hub.calls} == {("nyu-mll/glue", "mnli")}


def test_hub_fallback_wikisql_maps_the_table_and_conditions(monkeypatch):
    import datasets

    table = {"header": ["Player", "No."], "page_title": "", "page_id": "", "types": ["text", "real"],
             "id": "1-1-1", "section_title": "", "caption": "", "rows": [["Ann", "3"], ["Bo", "5"]], "name": "t"}
    sql = {"human_readable": "SELECT No. FROM table WHERE Player = Ann", "sel": 1, "agg": 0,
           "conds": {"column_index": [0], "operator_index": [0], "condition": ["Ann"]}}
    hub = FakeHub({"validation": [{"phase": 1, "question": "What number does Ann wear?", "table": table, "sql": sql}]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    task = make_task("wikisql", None, {"split_policy": "official"})
    [record] = task.load_split("validation")
    assert record["sql"] == {"sel": 1, "agg": 0, "conds": [[0, 0, "Ann"]]}
    assert record["table"]["header"] == ["Player", "No."] and record["table"]["rows"] == [["Ann", "3"], ["Bo", "5"]]
    assert task.target_text(record) == " SELECT No. FROM 1-1-1 WHERE Player = 'Ann'"
    assert hub.calls[0]["path"] == "Salesforce/wikisql"


def test_hub_failure_is_one_data_error(monkeypatch):
    import datasets

    def offline(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="tuetschek/e2e_nlg.*no network.*PEFTREPRO_DATA_ROOT"):
        make_task("e2e", None).load_split("train")
