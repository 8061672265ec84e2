"""The claims check: held / not held / inconclusive from the seed spread."""

from __future__ import annotations

import pytest

from peftrepro.aggregate import build_table
from peftrepro.tables import TABLES
from peftrepro.claims import HELD, INCONCLUSIVE, NOT_HELD, Cell, beats, evaluate, matches_or_beats



def cell(mean: float, std: float = 0.1, n: int = 3) -> Cell:
    return Cell("x", mean, std, n, "ok")


@pytest.mark.parametrize("compare,a,b,verdict", [
    (beats, cell(60.0), cell(50.0), HELD),
    (beats, cell(50.0), cell(60.0), NOT_HELD),
    (beats, cell(50.1, std=2.0), cell(50.0, std=2.0), INCONCLUSIVE),
    (beats, cell(60.0, n=1), cell(50.0), INCONCLUSIVE),
    (beats, cell(60.0), cell(float("nan"), n=0), INCONCLUSIVE),
    (matches_or_beats, cell(50.0, std=2.0), cell(50.5, std=2.0), HELD),
    (matches_or_beats, cell(50.0), cell(60.0), NOT_HELD),
    (matches_or_beats, cell(60.0), cell(50.0), HELD),
    (matches_or_beats, cell(60.0, n=1), cell(50.0, n=1), INCONCLUSIVE),
])
def test_comparisons(compare, a, b, verdict):
    assert compare(a, b).verdict == verdict


def weight_type_records(make_record, qv: float, q: float):
    for seed in range(3):
        for ranks, accuracy in (({"W_q": 4, "W_v": 4}, qv), ({"W_q": 8}, q)):
            yield make_record("table_weight_type", "wikisql", {"name": "lora", "ranks": ranks}, seed,
                              {"lf_accuracy": accuracy + seed / 1000})


@pytest.mark.parametrize("qv,q,verdict", [(0.6, 0.5, HELD), (0.5, 0.6, NOT_HELD)])
def test_weight_type_claim_on_records(runs_dir, write, make_record, qv, q, verdict):
    for record in weight_type_records(make_record, qv, q):
        write(record)
    claims = evaluate(build_table(TABLES["table_weight_type"], runs_dir))
    claim = next(c for c in claims if c.text.startswith("WikiSQL: adapting W_q,W_v (r=4) beats W_q alone"))
    assert claim.verdict == verdict
    # the MultiNLI half of the table has no records: its claims cannot be judged
    assert all(c.verdict == INCONCLUSIVE for c in claims if c.text.startswith("MultiNLI"))


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_has_claims_even_when_empty(runs_dir, name):
    claims = evaluate(build_table(TABLES[name], runs_dir))
    assert claims and all(c.verdict == INCONCLUSIVE for c in claims)
