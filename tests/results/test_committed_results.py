"""The committed tables under results/tables are generated, never edited: regenerating each from
its committed records (or, for the parameter table, from the code alone) gives the same bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TABLES = REPO / "results" / "tables"


@pytest.mark.skipif(not (TABLES / "table_latency.md").exists(), reason="no committed latency table")
def test_latency_table_is_regenerated_from_its_record(latency, tmp_path: Path) -> None:
    # the table names the record it was generated from (a CPU smoke and a GPU paper record may both exist)
    named = re.search(r"from `([^`]+/record\.json)`", (TABLES / "table_latency.md").read_text(encoding="utf-8"))
    assert named, "table_latency.md does not name its record"
    record = REPO / named.group(1)
    latency.main(["--from-record", str(record), "--results-dir", str(tmp_path)])
    for name in ("table_latency.md", "table_latency.csv"):
        assert (tmp_path / "tables" / name).read_bytes() == (TABLES / name).read_bytes(), name


@pytest.mark.skipif(not (TABLES / "params.md").exists(), reason="no committed parameter table")
def test_parameter_table_is_regenerated_by_the_code(tmp_path: Path) -> None:
    from peftrepro.report import params as params_table

    params_table.main(["--out", str(tmp_path)])
    for name in ("params.md", "params.csv"):
        assert (tmp_path / name).read_bytes() == (TABLES / name).read_bytes(), name


def _profile_seeds(profile: str) -> str:
    from omegaconf import OmegaConf

    return ",".join(map(str, OmegaConf.load(REPO / "conf" / "profile" / f"{profile}.yaml").seeds))


SECTION7_PAGES = ("figure_subspace", "table_amplification")  # report.subspace / report.amplification, below
COMMITTED_RUN_TABLES = sorted(p.stem for p in TABLES.glob("table_*.md") if p.stem not in ("table_latency", *SECTION7_PAGES))


@pytest.mark.parametrize("table", COMMITTED_RUN_TABLES)
def test_run_tables_are_reaggregated_from_the_committed_records(tmp_path: Path, monkeypatch, table: str) -> None:
    from peftrepro.report import aggregate

    monkeypatch.chdir(REPO)  # as `make aggregate` runs it: the tables name records by relative path
    aggregate.main(["--table", table, "--runs", "results/runs", "--out", str(tmp_path),
                    "--profile", "mini", "--seeds", _profile_seeds("mini"), "--no-plots"])
    for name in (f"{table}.md", f"{table}.csv"):
        assert (tmp_path / name).read_bytes() == (TABLES / name).read_bytes(), name


@pytest.mark.parametrize("name", SECTION7_PAGES)
def test_the_section7_pages_are_regenerated_from_the_committed_factors(tmp_path: Path, monkeypatch, name: str) -> None:
    """Their pages and verdicts byte for byte; Table 7's per-run numbers (SVDs of the backbone's W) to 1e-4."""
    import pandas as pd

    from peftrepro.report import amplification, subspace

    if not (TABLES / f"{name}.md").exists():
        pytest.skip(f"no committed {name}.md")
    module = {"figure_subspace": subspace, "table_amplification": amplification}[name]
    monkeypatch.chdir(REPO)  # as `make` runs it: the pages name the runs by relative path
    assert module.main(["--runs", "results/runs", "--out", str(tmp_path), "--profile", "mini",
                        "--seeds", _profile_seeds("mini")]) == 0
    for file in (f"{name}.md", f"{name}_statements.csv"):
        assert (tmp_path / file).read_bytes() == (TABLES / file).read_bytes(), file
    if name == "table_amplification":
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"{name}.csv"), pd.read_csv(TABLES / f"{name}.csv"),
                                      rtol=1e-4)


@pytest.mark.skipif(not (REPO / "results" / "REPORT.md").exists(), reason="no committed report")
def test_report_is_regenerated_from_the_committed_files() -> None:
    from peftrepro.report import page as report
    from peftrepro.report import records

    results = REPO / "results"
    text = report.render("mini", records.parse_seeds(_profile_seeds("mini")), Path("results/runs"),
                         Path("results/tables"), Path("results/bench"), root=REPO)
    assert text == (results / "REPORT.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not (REPO / "results" / "constraints.txt").exists(), reason="no committed constraints")
def test_constraints_are_regenerated_from_the_committed_records(monkeypatch) -> None:
    from peftrepro.report import page as report

    monkeypatch.chdir(REPO)  # as `make report` writes it: the file names itself by relative path
    text = report.constraints("mini", Path("results/runs"), Path("results/constraints.txt"))
    assert text == (REPO / "results" / "constraints.txt").read_text(encoding="utf-8")


def test_the_first_test_mrs_bleu_is_what_the_scorer_gives_on_the_prediction_texts() -> None:
    """The REPORT's BLEU on the first 100 test MRs sums the statistics saved beside each prediction; the
    E2E scorer (`peftrepro score e2e`'s BLEU) on those rows' own texts gives the same number."""
    from peftrepro.metrics.e2e import score_bleu
    from peftrepro.report.protocol import FIRST_MRS, first_mrs_bleu
    from peftrepro.report.records import load_records

    checked = 0
    for record in load_records(REPO / "results" / "runs")[0]:
        if (saved := first_mrs_bleu(record)) is not None:
            rows = record.prediction_rows()[:FIRST_MRS]
            texts = score_bleu([row["prediction"] for row in rows], [row["references"] for row in rows])
            assert saved == pytest.approx(100 * texts, abs=1e-6), record.run_key
            checked += 1
    if not checked:
        pytest.skip("no committed E2E test-set predictions")
