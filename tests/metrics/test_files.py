"""Reading prediction and reference files, and scoring them (peftrepro score e2e PRED REFS)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from peftrepro.errors import DataError
from peftrepro.metrics import score_e2e_files
from peftrepro.metrics.e2e import coco, read_prediction_file, read_references

REFERENCE_CSV = (
    '"mr","ref"\n'
    '"name[The Eagle]","The Eagle is a pub."\n'
    '"name[The Mill]","The Mill, a café."\n'
    '"name[The Eagle]","A pub: The Eagle."\n'
)
GROUPED = [["The Eagle is a pub.", "A pub: The Eagle."], ["The Mill, a café."]]


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["refs.csv", "refs.csv.gz"])
def test_reference_csv_is_grouped_by_mr_in_first_appearance_order(tmp_path: Path, name: str) -> None:
    assert read_references(_write(tmp_path / name, REFERENCE_CSV)) == GROUPED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a1\na2\n\nb1\n", [["a1", "a2"], ["b1"]]),  # the scorer's multi-reference text format
        ("a1\nb1\nc1\n", [["a1"], ["b1"], ["c1"]]),  # no blank line: one reference per MR
    ],
)
def test_reference_text_formats(tmp_path: Path, text: str, expected: list[list[str]]) -> None:
    assert read_references(_write(tmp_path / "refs.txt", text)) == expected


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("pred.txt", "The Eagle is a pub.\n\nThe Mill.\n"),  # an empty line is an empty prediction
        ("pred.tsv", "MR\toutput\nname[The Eagle]\tThe Eagle is a pub.\nx\t\nname[The Mill]\tThe Mill.\n"),
        ("pred.jsonl", "\n".join(json.dumps({"prediction": p}) for p in ["The Eagle is a pub.", "", "The Mill."])),
    ],
)
def test_prediction_formats(tmp_path: Path, name: str, text: str) -> None:
    assert read_prediction_file(_write(tmp_path / name, text)) == ["The Eagle is a pub.", "", "The Mill."]


def test_tsv_predictions_get_the_scorers_encoding_fixes(tmp_path: Path) -> None:
    path = _write(tmp_path / "pred.tsv", "mr\toutput\nx\tcosts Ł20 at CafÃ©\n")
    assert read_prediction_file(path) == ["costs £20 at Café"]


def test_predictions_with_mrs_are_matched_to_references_by_mr(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(coco, "meteor", lambda *args: None)
    refs = _write(tmp_path / "refs.csv", REFERENCE_CSV)
    in_order = _write(tmp_path / "a.tsv", "mr\toutput\nname[The Eagle]\tThe Eagle pub.\nname[The Mill]\tA café.\n")
    swapped = _write(tmp_path / "b.tsv", "mr\toutput\nname[The Mill]\tA café.\nname[The Eagle]\tThe Eagle pub.\n")
    assert score_e2e_files(swapped, refs) == pytest.approx(score_e2e_files(in_order, refs))


@pytest.mark.parametrize(
    ("pred_name", "pred_text", "message"),
    [
        ("pred.txt", "only one line\n", r"1 predictions in .*pred\.txt but 2 MRs .* in .*refs\.csv"),
        ("pred.tsv", "mr\toutput\nname[The Eagle]\tx\n", r"1 predictions in .*pred\.tsv but 2 MRs in .*refs\.csv"),
        (
            "pred.tsv",
            "mr\toutput\nname[The Eagle]\tx\nname[Zizzi]\ty\n",
            r"not in .*refs\.csv.*prediction 2: 'name\[Zizzi\]'",
        ),
        ("pred.tsv", "mr\ttext\nname[The Eagle]\tx\n", r"no column 'output' or 'prediction'"),
        ("pred.tsv", "mr\toutput\nname[The Eagle]\tx\textra\n", r"row 2: 3 fields"),
        ("pred.jsonl", '{"prediction": "x"}\n{"prediction": \n', r"line 2: not valid JSON"),
        ("pred.jsonl", '{"output": "x"}\n', r'line 1: expected an object with a string "prediction"'),
        ("pred.txt", "", r"is empty"),
    ],
)
def test_file_problems_give_one_clear_error(tmp_path: Path, pred_name: str, pred_text: str, message: str) -> None:
    refs = _write(tmp_path / "refs.csv", REFERENCE_CSV)
    with pytest.raises(DataError, match=message):
        score_e2e_files(_write(tmp_path / pred_name, pred_text), refs)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("refs.csv", '"mr","text"\n"a","b"\n', r"no column 'ref' or 'reference'"),
        ("refs.txt", "a1\n\n\nb1\n", r"line 3: a second blank line"),
        ("missing.csv", None, r"File not found"),
    ],
)
def test_reference_problems_give_one_clear_error(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    path = tmp_path / name if text is None else _write(tmp_path / name, text)
    with pytest.raises(DataError, match=message):
        read_references(path)
