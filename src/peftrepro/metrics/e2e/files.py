"""Prediction and reference files in the formats the E2E scorer (and this suite) use.

Predictions: one per line (.txt or any other suffix); a .tsv/.csv with an ``output`` column
(and optionally ``mr``), like the challenge's system outputs (tgen.tsv); or .jsonl with a
``prediction`` field (and optionally ``mr``).
References: the official CSV (``mr``, ``ref`` columns; .csv or .csv.gz), grouped by MR in
first-appearance order; or the scorer's text format, the references of one MR on consecutive
lines and MRs separated by a blank line (no blank line at all: one reference per MR per line).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from peftrepro.errors import DataError

# measure_scores.py repairs these mis-encodings in every TSV/CSV it reads; so do we, so that a
# submission with "Ł" for "£" scores as it did in the challenge.
_SCORER_ENCODING_FIXES = (("Ł", "£"), ("Â£", "£"), ("Ã©", "é"), ("ã©", "é"))
_TABLE_SUFFIXES = (".csv", ".tsv")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"File not found: {path}. Check the path (E2E data lives under $PEFTREPRO_DATA_ROOT/e2e/).")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as handle:
            text = handle.read()
    except (UnicodeDecodeError, OSError, EOFError) as error:
        kind = "gzip-compressed UTF-8 text" if path.suffix == ".gz" else "UTF-8 text"
        raise DataError(f"Cannot read {path} as {kind}: {error}") from error
    if not text.strip():
        raise DataError(f"{path} is empty.")
    return text


def _is_table(path: Path) -> bool:
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    return bool(suffixes) and suffixes[0].lower() in _TABLE_SUFFIXES


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV/TSV (tab-separated when the header line has a tab, as the
    scorer decides); blank lines are skipped and the scorer's encoding fixes applied."""
    text = _read_text(path)
    for wrong, right in _SCORER_ENCODING_FIXES:
        text = text.replace(wrong, right)
    delimiter = "\t" if "\t" in text.split("\n", 1)[0] else ","
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
    header, body = [name.strip().lower() for name in rows[0]], rows[1:]
    for line_number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}, row {line_number}: {len(row)} fields, the header has {len(header)} ({', '.join(header)}). "
                "Quote fields that contain the separator."
            )
    return header, body


def _column(header: list[str], names: tuple[str, ...], path: Path, required: bool = True) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    if required:
        raise DataError(f"{path} has no column {' or '.join(map(repr, names))}; its header is {header}.")
    return None


def _read_jsonl_predictions(path: Path) -> tuple[list[str] | None, list[str]]:
    mrs: list[str | None] = []
    predictions: list[str] = []
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line_number}: not valid JSON ({error.msg}).") from error
        if not isinstance(record, dict) or not isinstance(record.get("prediction"), str):
            raise DataError(f'{path}, line {line_number}: expected an object with a string "prediction" field.')
        predictions.append(record["prediction"])
        mrs.append(record.get("mr"))
    return (mrs if all(isinstance(mr, str) for mr in mrs) else None), predictions


def read_predictions_with_mrs(path: str | Path) -> tuple[list[str] | None, list[str]]:
    """(MRs or None when the file has none, predictions) in file order."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl_predictions(path)
    if _is_table(path):
        header, rows = _read_table(path)
        output = _column(header, ("output", "prediction"), path)
        mr = _column(header, ("mr",), path, required=False)
        return ([row[mr] for row in rows] if mr is not None else None), [row[output].strip() for row in rows]
    # plain text: every line is a prediction, an empty line an empty prediction (as the scorer reads it)
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return None, [line.strip() for line in lines]


def read_prediction_file(path: str | Path) -> list[str]:
    """The predictions of a .txt (one per line), .tsv/.csv (``output`` column) or .jsonl
    (``prediction`` field) file, in file order."""
    return read_predictions_with_mrs(path)[1]


def _read_reference_text(path: Path) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            groups[-1].append(line.strip())
        elif groups[-1]:
            groups.append([])
        else:
            raise DataError(
                f"{path}, line {line_number}: a second blank line in a row, i.e. an MR without references. "
                "Separate the reference groups by exactly one blank line."
            )
    if not groups[-1]:
        groups.pop()
    if len(groups) == 1:  # no blank line: a single-reference file, one MR per line (as the scorer reads it)
        return [[ref] for ref in groups[0]]
    return groups


def read_references_with_mrs(path: str | Path) -> tuple[list[str] | None, list[list[str]]]:
    """(MRs or None for the text format, reference groups): CSV rows grouped by MR, MRs in
    order of first appearance."""
    path = Path(path)
    if not _is_table(path):
        return None, _read_reference_text(path)
    header, rows = _read_table(path)
    mr_column = _column(header, ("mr",), path)
    ref_column = _column(header, ("ref", "reference"), path)
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row[mr_column], []).append(row[ref_column])
    return list(groups), list(groups.values())


def read_references(path: str | Path) -> list[list[str]]:
    """The references of each MR, from the official CSV (.csv/.csv.gz) or the scorer's text format."""
    return read_references_with_mrs(path)[1]


def align_references_by_mr(
    prediction_mrs: list[str],
    reference_mrs: list[str],
    references: list[list[str]],
    pred_path: str | Path,
    refs_path: str | Path,
) -> list[list[str]]:
    """The reference group of each prediction's MR (the scorer reorders the same way)."""
    if len(prediction_mrs) != len(reference_mrs):
        raise DataError(
            f"{len(prediction_mrs)} predictions in {pred_path} but {len(reference_mrs)} MRs in {refs_path}: "
            "give exactly one prediction per MR of the reference file."
        )
    by_mr = dict(zip(reference_mrs, references))
    missing = [(row, mr) for row, mr in enumerate(prediction_mrs, start=1) if mr not in by_mr]
    if missing:
        row, mr = missing[0]
        raise DataError(
            f"{pred_path}: {len(missing)} prediction MRs are not in {refs_path}, the first at prediction {row}: {mr!r}."
        )
    return [by_mr[mr] for mr in prediction_mrs]
