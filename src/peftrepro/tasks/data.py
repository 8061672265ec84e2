"""Where the datasets come from: a local data root, or the Hugging Face hub when none is configured.

A data root is a directory in this layout (the README's "Data and models" says where each file comes from):

    e2e/{train,dev,test}.csv.gz                         columns mr, ref
    wikisql/{dev,test}.jsonl.gz, wikisql/test.tables.jsonl.gz
    mnli/{train_subset,validation_matched,validation_mismatched}.jsonl.gz

Resolution order: the explicit `data_root` argument (Hydra `data_root`), then the environment
variable PEFTREPRO_DATA_ROOT, then the hub. A configured root is never silently replaced by the
hub: a file missing there is a DataError that says how to fix it.

Every reader raises ONE DataError naming the file, the line and the fix, so a broken file never
surfaces as a KeyError deep inside a tokenizer.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

from peftrepro.errors import DataError

DATA_ROOT_ENV = "PEFTREPRO_DATA_ROOT"

FIX_HINT = (
    "Point the data root at a directory in the layout peftrepro.tasks.data describes (data_root=/path on the "
    f"command line, or export {DATA_ROOT_ENV}=/path), or unset both to download from the Hugging "
    "Face hub; `peftrepro.tasks.write_fixtures(dir)` writes a tiny valid copy for testing."
)

# The hub datasets a user would expect (checked 2025: `datasets` >= 4 no longer runs loading
# scripts, so the script-based repos are read from their auto-converted parquet branch).
HUB_E2E = {"path": "tuetschek/e2e_nlg", "revision": "refs/convert/parquet"}
HUB_WIKISQL = {"path": "Salesforce/wikisql", "revision": "refs/convert/parquet"}
HUB_MNLI = {"path": "nyu-mll/glue", "name": "mnli"}


def resolve_data_root(data_root: str | os.PathLike | None) -> Path | None:
    """The local data root to read, or None when the hub should be used."""
    chosen = data_root if data_root not in (None, "") else os.environ.get(DATA_ROOT_ENV) or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        source = "data_root" if data_root not in (None, "") else DATA_ROOT_ENV
        raise DataError(f"data root {root} (from {source}) is not a directory. {FIX_HINT}")
    return root


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found. {FIX_HINT}")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _read_guarded(path: Path, read: Callable[[io.TextIOBase], list]) -> list:
    """Run `read` on the opened file, turning decoding failures into a DataError on `path`."""
    require_file(path)
    try:
        with _open_text(path) as handle:
            records = read(handle)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read ({exc}). {FIX_HINT}") from exc
    if not records:
        raise DataError(f"{path}: file is empty (no records). {FIX_HINT}")
    return records


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Records of a (gzipped) JSONL file; each must be an object holding the `required` keys."""

    def read(handle: io.TextIOBase) -> list[dict[str, Any]]:
        records = []
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({exc.msg}). {FIX_HINT}") from exc
            _check_fields(record, required, path, line_no)
            records.append(record)
        return records

    return _read_guarded(path, read)


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a (gzipped) CSV file with a header row naming at least the `required` columns."""

    def read(handle: io.TextIOBase) -> list[dict[str, str]]:
        reader = csv.DictReader(handle)
        missing = [name for name in required if name not in (reader.fieldnames or [])]
        if reader.fieldnames and missing:
            raise DataError(f"{path}, line 1: header {reader.fieldnames} lacks column(s) {missing}. {FIX_HINT}")
        rows = []
        for row in reader:
            _check_fields(row, required, path, reader.line_num)
            rows.append({name: row[name] for name in required})
        return rows

    return _read_guarded(path, read)


def _check_fields(record: Any, required: tuple[str, ...], path: Path, line_no: int) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}. {FIX_HINT}")
    missing = [name for name in required if record.get(name) in (None, "") and not _is_zero(record.get(name))]
    if missing:
        raise DataError(f"{path}, line {line_no}: missing or empty field(s) {missing}. {FIX_HINT}")


def _is_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


# ----------------------------------------------------------------------------- hub fallback
# Each loader maps a hub split to the same records the local files give, so the tasks never
# know where their data came from. They cannot run offline; tests mock `datasets.load_dataset`.


def _hub_split(spec: dict[str, str], split: str):
    import datasets  # imported late: only the hub path needs it

    try:
        return datasets.load_dataset(**spec, split=split)
    except Exception as exc:  # network, auth, unknown split: one clear message
        raise DataError(
            f"could not load {spec['path']} split {split!r} from the Hugging Face hub ({exc}). {FIX_HINT}"
        ) from exc


def hub_e2e(split: str) -> list[dict[str, str]]:
    """E2E rows {mr, ref}; split is train / validation / test (the hub's names)."""
    return [{"mr": row["meaning_representation"], "ref": row["human_reference"]}
            for row in _hub_split(HUB_E2E, split)]


def hub_wikisql(split: str) -> list[dict[str, Any]]:
    """WikiSQL records in the official jsonl format plus the example's own table."""
    return [_wikisql_from_hub(row) for row in _hub_split(HUB_WIKISQL, split)]


def _wikisql_from_hub(row: dict[str, Any]) -> dict[str, Any]:
    sql, table, conds = row["sql"], row["table"], row["sql"]["conds"]
    return {
        "phase": row.get("phase"),
        "table_id": table["id"],
        "question": row["question"],
        "sql": {
            "sel": sql["sel"],
            "agg": sql["agg"],
            "conds": [list(cond) for cond in zip(conds["column_index"], conds["operator_index"], conds["condition"])],
        },
        "table": {"id": table["id"], "header": list(table["header"]), "types": list(table["types"]),
                  "rows": [list(r) for r in table["rows"]], "ambiguous_rows": []},
    }


def hub_mnli(split: str) -> list[dict[str, Any]]:
    """MNLI pairs {premise, hypothesis, label, label_text}; unlabeled (-1) test rows dropped."""
    names = ("entailment", "neutral", "contradiction")  # HF glue/mnli ClassLabel order
    return [{"premise": row["premise"], "hypothesis": row["hypothesis"], "label": row["label"],
             "label_text": names[row["label"]]}
            for row in _hub_split(HUB_MNLI, split) if row["label"] in (0, 1, 2)]
