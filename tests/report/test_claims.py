"""The claims check: held / not held / inconclusive from the seed spread and the evaluation sample."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest

from peftrepro.report.cells import build_table
from peftrepro.report.claims import (
    HELD,
    INCONCLUSIVE,
    MAX_SHOWN,
    NOT_HELD,
    WHY_FEWER_MATRICES,
    WHY_FT,
    WHY_FT_E2E,
    Cell,
    Claim,
    Difference,
    Pool,
    beats,
    combine,
    evaluate,
    matches_or_beats,
    outlying_spread,
    pooled,
    quantile,
    render,
)
from peftrepro.report.devices import DeviceGap
from peftrepro.report.records import parse_record
from peftrepro.report.render import incomplete_lines
from peftrepro.report.specs import TABLES


def cell(mean: float, std: float = 0.1, n: int = 3, sampling_se: float = 0.0, status: str | None = None) -> Cell:
    status = status or ("missing" if n == 0 else "ok")
    return Cell("x", mean, std, n, status, sampling_se, metric="accuracy_m")


@pytest.mark.parametrize("compare,a,b,verdict", [
    (beats, cell(60.0), cell(50.0), HELD),
    (beats, cell(50.0), cell(60.0), NOT_HELD),
    (beats, cell(50.1, std=2.0), cell(50.0, std=2.0), INCONCLUSIVE),
    (beats, cell(60.0, n=1), cell(50.0), INCONCLUSIVE),
    (beats, cell(60.0), cell(float("nan"), n=0), INCONCLUSIVE),
    # 'matches or beats' is non-inferiority within the equivalence margin (2 points of accuracy):
    # a wide interval that reaches below -2 is "not shown worse", which is inconclusive, not held
    (matches_or_beats, cell(50.0, std=2.0), cell(50.5, std=2.0), INCONCLUSIVE),
    (matches_or_beats, cell(50.0), cell(60.0), NOT_HELD),
    (matches_or_beats, cell(60.0), cell(50.0), HELD),
    (matches_or_beats, cell(49.5), cell(50.0), HELD),  # a little worse, but surely within the margin
    (matches_or_beats, cell(60.0, n=1), cell(50.0, n=1), INCONCLUSIVE),
    # the same 4-point gap with no seed spread: the evaluation sample's error alone decides
    (beats, cell(54.0, std=0.0), cell(50.0, std=0.0), HELD),
    (beats, cell(54.0, std=0.0, sampling_se=3.5), cell(50.0, std=0.0, sampling_se=3.5), INCONCLUSIVE),
    (matches_or_beats, cell(50.0, std=0.0, sampling_se=3.5), cell(54.0, std=0.0, sampling_se=3.5), INCONCLUSIVE),
    (matches_or_beats, cell(50.0, std=0.0, sampling_se=0.5), cell(54.0, std=0.0, sampling_se=0.5), NOT_HELD),
    (matches_or_beats, cell(52.0, std=0.0, sampling_se=0.5), cell(50.0, std=0.0, sampling_se=0.5), HELD),
])
def test_comparisons(compare, a, b, verdict):
    assert compare(a, b).verdict == verdict


def exact(mean: float) -> Cell:
    """A cell whose only error is the evaluation set's: half-width 1.96·hypot(1, 1) = 2.77 on a difference."""
    return cell(mean, std=0.0, sampling_se=1.0)


@pytest.mark.parametrize("compare,a,b,verdict,marginal", [
    (beats, exact(52.9), exact(50.0), HELD, True),          # 0.13 past the line
    (beats, exact(56.0), exact(50.0), HELD, False),
    (beats, exact(50.0), exact(52.9), NOT_HELD, True),
    (beats, exact(51.0), exact(50.0), INCONCLUSIVE, False),
    (matches_or_beats, exact(50.0), exact(54.9), NOT_HELD, True),  # the interval ends 0.13 below -2
    (matches_or_beats, exact(51.0), exact(50.0), HELD, True),  # it starts 0.23 above -2
    (matches_or_beats, exact(52.0), exact(50.0), HELD, False),
])
def test_a_verdict_within_a_tenth_of_its_half_width_is_marginal(compare, a, b, verdict, marginal):
    comparison = compare(a, b)
    assert (comparison.verdict, comparison.marginal) == (verdict, marginal)
    claim = combine("claim", "§0", [comparison])
    assert claim.marginal == marginal
    assert (f"**{verdict}** (marginal) |" in render([claim])[2]) == marginal


def test_a_claim_not_held_is_marginal_only_if_every_failing_comparison_is():
    near, far = matches_or_beats(exact(50.0), exact(54.9)), matches_or_beats(exact(50.0), exact(60.0))
    assert combine("claim", "§0", [near]).marginal
    assert not combine("claim", "§0", [near, far]).marginal


@pytest.mark.parametrize("last, waiting", [
    (cell(50.0), ""), (cell(50.0, n=1, status="partial"), "one seed"), (cell(float("nan"), n=0), "no result"),
    (cell(50.0, n=1), ""),  # one seed is all a one-seed profile (smoke) runs: nothing to wait for
    (cell(float("nan"), n=0, status="failed"), ""),  # its runs ran and failed: a rerun is a choice, not a wait
])
def test_a_claim_knows_a_cell_still_waiting_for_runs_beyond_the_comparisons_it_quotes(last, waiting):
    """The evidence quotes at most MAX_SHOWN comparisons; a missing cell in the next one still counts."""
    wide = [matches_or_beats(cell(50.0, std=2.0), cell(50.5, std=2.0)) for _ in range(MAX_SHOWN)]
    claim = combine("claim", "§0", [*wide, matches_or_beats(cell(50.0, std=2.0), last)])
    assert claim.verdict == INCONCLUSIVE and claim.waiting == waiting
    assert "has no result" not in claim.evidence and "has one seed" not in claim.evidence


@pytest.mark.parametrize("last, printed", [(cell(float("nan"), n=0), "— (not all its cells have run yet)"),
                                           (cell(50.0, n=1, status="partial"), "— (one seed: no spread)"),
                                           (cell(50.0, n=1), "inconclusive")])
def test_a_claim_waiting_for_runs_prints_no_verdict_yet(last, printed):
    """Inconclusive for want of runs is not a verdict: pages print "—" with what is missing."""
    claim = combine("claim", "§0", [matches_or_beats(cell(50.0, std=2.0), last)])
    assert claim.verdict == INCONCLUSIVE and claim.printed() == printed
    shown = printed if printed.startswith("—") else f"**{printed}**"
    assert f"| claim | §0 | {shown} |" in render([claim])[2]


def test_the_evidence_names_a_missing_cell_before_the_other_s_one_seed():
    claim = combine("claim", "§0", [matches_or_beats(cell(50.0, n=1), cell(float("nan"), n=0))])
    assert claim.evidence.endswith("x has no result") and "one seed" not in claim.evidence


@pytest.mark.parametrize(("others", "shown", "which"), [
    ([50.5, 51.0, 50.0, 49.5], [51.0, 50.5, 50.0], "those furthest from holding; all 4: 4 inconclusive"),
    ([70.0, 60.0, 80.0, 40.0], [80.0, 70.0, 60.0], "the clearest failures; all 4: 1 held, 3 not held")])
def test_a_claim_quotes_the_comparisons_that_weigh_most(others, shown, which):
    """Beyond MAX_SHOWN comparisons, a claim quotes those furthest from holding, not the first in list order."""
    claim = combine("claim", "§0", [matches_or_beats(cell(50.0, std=2.0), cell(mean, std=2.0)) for mean in others])
    assert [float(mean) for mean in re.findall(r" vs x ([\d.]+)", claim.evidence)] == shown
    assert claim.evidence.endswith(f"(shown: 3 of 4 comparisons, {which})")


# gaps −3, 1, 2, −1: mean −0.25, std 2.2174, so the mean's standard error 2.2174 / √4 = 1.1087
CPU_GPU = DeviceGap(("CPU fp32", "GPU bf16"), "accuracy_m", (-3.0, 1.0, 2.0, -1.0))


def on(devices: tuple[str, ...], mean: float, gaps: tuple[DeviceGap, ...] = (CPU_GPU,)) -> Cell:
    """A cell of 2 seeds whose runs ran on `devices` (kinds), with its table's measured offsets."""
    return replace(cell(mean, std=1.0, n=2), devices=devices, device_gaps=gaps)


CPU2, GPU2, MIXED = ("CPU fp32",) * 2, ("GPU bf16",) * 2, ("CPU fp32", "GPU bf16")
UNKNOWN = ("CPU fp32", "unrecorded hardware")


@pytest.mark.parametrize("a, b, delta, device_se, how", [
    (on(CPU2, 56.0), on(CPU2, 50.0), 6.0, 0.0, ""),  # one kind of device: no offset to fear
    (on(MIXED, 56.0), on(MIXED, 50.0), 6.0, 0.0, ""),  # the same shares of each: an offset cancels
    (on(CPU2, 56.0), on(GPU2, 50.0), 6.25, 1.1087, "(Δ corrected by +0.25: +1.00 × the CPU fp32 − GPU bf16 offset -0.25"),
    (on(GPU2, 56.0), on(CPU2, 50.0), 5.75, 1.1087, "(Δ corrected by -0.25: -1.00 ×"),
    (on(MIXED, 56.0), on(GPU2, 50.0), 6.125, 0.5543, "(Δ corrected by +0.12: +0.50 ×"),
    (on(CPU2, 56.0, gaps=()), on(GPU2, 50.0, gaps=()), 6.0, 0.0,
     "device offset not estimated (no two runs of this metric rerun on CPU fp32 and GPU bf16)"),
    (on(CPU2, 56.0, gaps=(replace(CPU_GPU, gaps=(1.0,)),)), on(GPU2, 50.0), 6.0, 0.0, "not estimated"),  # one pair
    (on(CPU2, 56.0, gaps=(replace(CPU_GPU, metric="bleu"),)), on(GPU2, 50.0), 6.0, 0.0, "not estimated"),
    (on((*UNKNOWN, "GPU bf16"), 56.0), on(GPU2, 50.0), 6.0, 0.0, "not estimated (runs of 3 kinds of device"),
    (on(UNKNOWN, 56.0), on(UNKNOWN, 50.0), 6.0, 0.0, ""),  # unknown, but the same on both sides
])
def test_cells_run_on_different_kinds_of_device_are_corrected_by_the_measured_offset(a, b, delta, device_se, how):
    """Δ less (share_A − share_B) × the mean gap; the mean's standard error joins the seed and evaluation terms."""
    from peftrepro.report.claims import _difference

    difference = _difference(a, b)
    assert difference.delta == pytest.approx(delta)
    assert difference.device_se == pytest.approx(device_se, abs=1e-4)
    assert difference.se == pytest.approx(math.hypot(difference.seed_se, device_se), abs=1e-4)  # no eval term here
    evidence = beats(a, b).evidence
    assert (how in evidence and "device offset 0.00" not in evidence) if how else "device offset" not in evidence


def test_a_measured_offset_between_devices_can_undo_a_verdict():
    """6 points apart at a seed SD of 1 is held on one device. Across devices whose runs of one setting differ by
    5 points (measured closely), the same 6 points are 1 point of method: inconclusive."""
    offset = DeviceGap(("CPU fp32", "GPU bf16"), "accuracy_m", (5.0, 5.2, 4.8, 5.1))
    assert beats(on(CPU2, 56.0, (offset,)), on(CPU2, 50.0, (offset,))).verdict == HELD
    across = beats(on(CPU2, 56.0, (offset,)), on(GPU2, 50.0, (offset,)))
    assert across.verdict == INCONCLUSIVE and "Δ = +0.97" in across.evidence  # 6 − 5.025


def test_the_printed_degrees_of_freedom_give_the_printed_interval():
    """With an evaluation-set term the df are fractional (Welch–Satterthwaite): printed as used."""
    difference = Difference(delta=2.0, seed_se=1.0, seed_df=2, eval_se=0.6)
    df = float(str(difference).split("t with ")[1].split(" df")[0])
    assert df == pytest.approx(3.7, abs=0.05)  # (1² + 0.6²)² / (1⁴ / 2)
    assert quantile(df) * difference.se == pytest.approx(difference.half_width, rel=1e-2)
    with_devices = replace(difference, eval_se=0.0, device_se=1.0, device_df=5, device_how=" (offset)")
    assert with_devices.df == pytest.approx(4 / (1 / 2 + 1 / 5))  # (1² + 1²)² / (1⁴/2 + 1⁴/5): both terms estimated


@pytest.mark.parametrize("n, df, quantile_", [(2, 2, 4.303), (3, 4, 2.776), (11, 20, 2.086)])
def test_the_seed_term_uses_the_pooled_spread_and_its_degrees_of_freedom(n, df, quantile_):
    """Two cells of n seeds each with sd 1: pooled df = 2(n-1), the interval a t quantile wide."""
    a, b = cell(52.0, std=1.0, n=n), cell(50.0, std=1.0, n=n)
    pool = Pool.of([a, b])
    assert pool.df == df and pool.sd == pytest.approx(1.0)
    comparison = beats(replace(a, pool=pool), replace(b, pool=pool))
    assert comparison.half_width == pytest.approx(quantile_ * (2 / n) ** 0.5, rel=1e-3)
    assert f"t with {df:.1f} df" in comparison.evidence and "pooled over 2 cells" in comparison.evidence


# Cochran's critical C for k cells of n seeds at the 1 % level, ISO 5725-2:1994 Table 4: a cell is
# set apart when s_max² / Σ s_i² exceeds it (here the other k − 1 cells have variance 1)
@pytest.mark.parametrize("k, n, critical", [(3, 2, 0.993), (6, 2, 0.883), (10, 2, 0.718), (5, 3, 0.789)])
def test_cochrans_test_sets_apart_a_spread_beyond_its_published_critical_value(k, n, critical):
    def cells(c: float) -> list[Cell]:
        widest_variance = c * (k - 1) / (1 - c)  # so that s_max² / Σ s_i² = c
        return [replace(cell(50.0, std=widest_variance ** 0.5, n=n), label="wide"),
                *(replace(cell(50.0, std=1.0, n=n), label=f"c{i}") for i in range(k - 1))]
    assert outlying_spread(cells(critical - 0.002)) is None
    assert outlying_spread(cells(critical + 0.002)) == 0


def test_with_unequal_seeds_the_most_extreme_spread_is_tested_not_the_widest():
    """A two-seed cell's wide spread is weak evidence; a ten-seed cell's slightly narrower one is not."""
    cells = [cell(50.0, std=2.3, n=2), *(cell(50.0, std=1.0, n=10) for _ in range(4)), cell(50.0, std=2.2, n=10)]
    assert outlying_spread(cells) == 5


def test_no_spread_is_outlying_against_others_that_have_none():
    """Two seeds can score alike (accuracies are discrete): that is no ground to set a spread apart."""
    assert outlying_spread([cell(50.0, std=0.0, n=2), cell(50.0, std=0.0, n=2), cell(50.0, std=0.05, n=2)]) is None


def test_a_cell_with_an_outlying_spread_is_set_apart_and_judged_on_its_own_spread():
    """One spiked seed (sd 11) among five steady cells (sd 1-2): it no longer widens the others'
    intervals, and its own comparisons carry its spread with its one degree of freedom."""
    stds = {"spiked": 11.4, "a": 1.8, "b": 1.6, "c": 0.6, "d": 2.0, "e": 0.1}
    cells = pooled({label: replace(cell(50.0, std=std, n=2), label=label) for label, std in stds.items()})
    pool = cells["a"].pool
    assert [label for label, c in cells.items() if c.own_spread] == ["spiked"] and pool.cells == 5 and pool.df == 5
    steady = beats(cells["a"], cells["b"])
    assert "pooled over 5 cells" in steady.evidence
    assert steady.half_width == pytest.approx(quantile(5) * pool.sd, rel=1e-6)  # sqrt(1/2 + 1/2) = 1
    spiked = beats(cells["spiked"], cells["b"])
    assert "spiked set apart from the pool by Cochran's test" in spiked.evidence
    own, other = 11.4 ** 2 / 2, pool.sd ** 2 / 2
    df = (own + other) ** 2 / (own ** 2 / 1 + other ** 2 / 5)
    assert spiked.half_width == pytest.approx(quantile(df) * (own + other) ** 0.5, rel=1e-6)


def test_spreads_alike_are_pooled_whole():
    cells = pooled({label: replace(cell(50.0, std=std, n=2), label=label)
                    for label, std in {"a": 1.0, "b": 3.0, "c": 2.0, "d": 0.5}.items()})
    assert not any(c.own_spread for c in cells.values()) and cells["a"].pool.cells == 4


def test_a_cell_is_set_apart_by_its_place_not_its_label():
    """Two cells sharing a label: only the one whose spread is outlying is judged on its own spread."""
    cells = pooled({key: replace(cell(50.0, std=std, n=2), label="same")
                    for key, std in {"steady": 1.0, "spiked": 40.0, "b": 1.2, "c": 0.8, "d": 1.1}.items()})
    assert [key for key, c in cells.items() if c.own_spread] == ["spiked"]
    assert "pooled over 4 cells" in beats(cells["steady"], cells["b"]).evidence


def test_a_cell_that_did_not_learn_is_left_out_of_the_pool_and_judges_nothing():
    good, failed = cell(60.0, std=1.0, n=2), replace(cell(35.0, std=9.0, n=2), did_not_learn=("seed 0: 35.0 vs 36.0",))
    assert Pool.of([good, failed]).df == 1
    comparison = matches_or_beats(good, failed)
    assert comparison.verdict == INCONCLUSIVE
    assert ("x did not learn in 1 of its 2 seeds (seed 0: 35.0 vs 36.0), so its mean over seeds says nothing of the "
            "method") in comparison.evidence
    both = replace(failed, did_not_learn=("seed 0: 35.0 vs 36.0", "seed 1: 35.5 vs 36.0"))
    assert ("x did not learn (seed 0: 35.0 vs 36.0; seed 1: 35.5 vs 36.0), so its score says nothing of the method"
            in matches_or_beats(good, both).evidence)
    # where both cells failed, both are named: the other's score is no result either
    other = replace(both, label="y", did_not_learn=("seed 0: 34.0 vs 36.0", "seed 1: 33.0 vs 36.0"))
    assert matches_or_beats(other, both).evidence.endswith(
        ": y did not learn (seed 0: 34.0 vs 36.0; seed 1: 33.0 vs 36.0), so its score says nothing of the method; "
        "x did not learn (seed 0: 35.0 vs 36.0; seed 1: 35.5 vs 36.0), so its score says nothing of the method")


@pytest.mark.parametrize("reason, seeds, listed", [("Failed fit.", 2, True), ("", 2, False), ("Failed fit.", 1, False)])
def test_a_claim_left_inconclusive_by_a_cell_that_did_not_learn_says_why_only_where_it_explains_that(
        reason, seeds, listed):
    """The pruning claims explain a cell that does not learn (`why_unlearned`, given the failed cells); no
    reason where it names none, and none while a cell has one seed (no spread: that, not the fit, stops it)."""
    good = replace(cell(60.0, std=1.0, n=2), label="magnitude", training="lr 3e-4")
    failed = replace(cell(35.0, std=1.0, n=seeds), label="movement", training="lr 1e-3",
                     did_not_learn=("seed 0: 35.0 vs 35.5",) * seeds)
    given = []
    claim = combine("magnitude matches or beats movement", "§6", [matches_or_beats(good, failed)], "Gap.",
                    lambda cells: given.extend(cells) or reason)
    assert claim.verdict == INCONCLUSIVE
    assert claim.why == ("Failed fit. As trained here: magnitude: lr 3e-4; movement: lr 1e-3." if listed else "")
    assert given == ([failed] if seeds == 2 else [])
    reasons = [line for line in render([claim]) if line.startswith("- ")]
    assert reasons == ([f"- Inconclusive, as a compared cell did not learn: {claim.text}. {claim.why}"] if listed else [])
    held = combine("magnitude beats nothing", "§6", [matches_or_beats(good, replace(good, mean=50.0))], "Gap.",
                   lambda cells: reason)
    assert held.verdict == HELD and not held.why


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


def test_a_claim_not_held_says_why_and_how_the_cells_trained(runs_dir, write, make_record):
    for record in weight_type_records(make_record, qv=0.5, q=0.6):
        record["training"] = {"steps": 250, "final_loss": 0.9 if "W_v" in record["method"]["ranks"] else 0.7}
        write(record)
    claims = evaluate(build_table(TABLES["table_weight_type"], runs_dir))
    failed = next(c for c in claims if c.text.startswith("WikiSQL: adapting W_q,W_v (r=4) beats W_q alone"))
    assert failed.verdict == NOT_HELD
    assert failed.why == (f"{WHY_FEWER_MATRICES} As trained here: W_q,W_v: 1.00K trainable, lr 2e-4, "
                          "250 steps, final training loss 0.90 (mean of 3); W_q: 1.00K trainable, lr 2e-4, "
                          "250 steps, final training loss 0.70 (mean of 3).")
    assert f"- Not held: {failed.text}. {failed.why}" in render(claims)
    assert all(not c.why for c in claims if c.verdict != NOT_HELD)


def test_claims_not_held_for_one_reason_share_its_line_and_the_rule_can_be_left_to_the_page():
    """Table 3's two LoRA claims fall on the same comparison: one reason, both claims named; a page that
    states the rule once (REPORT.md) leaves it out of each table."""
    claims = [Claim("A beats B on BLEU", "Table 3", NOT_HELD, "…", why="Same reason."),
              Claim("A beats B on all metrics", "Table 3", NOT_HELD, "…", why="Same reason."),
              Claim("C beats D", "Table 3", NOT_HELD, "…", why="Another reason.")]
    lines = render(claims)
    assert [line for line in lines if line.startswith("- Not held")] == [
        "- Not held: A beats B on BLEU; A beats B on all metrics. Same reason.",
        "- Not held: C beats D. Another reason."]
    assert any(line.startswith("Interval: 95 %") for line in lines)
    assert not any(line.startswith(("Interval:", "Verdict:")) for line in render(claims, with_rule=False))


@pytest.mark.parametrize("experiment,task,lora,metric,why", [
    ("table_e2e", "e2e", {"name": "lora", "weights": ["W_q", "W_v"], "r": 4, "ranks": None}, "bleu", WHY_FT_E2E),
    ("table_methods", "wikisql", {"name": "lora", "weights": ["W_q", "W_v"], "r": 8, "ranks": None},
     "lf_accuracy", WHY_FT),
])
def test_lora_below_full_fine_tuning_is_explained_by_its_own_tables_model(runs_dir, write, make_record,
                                                                           experiment, task, lora, metric, why):
    for seed in (0, 1):
        write(make_record(experiment, task, lora, seed, {metric: 0.50 + seed / 100}))
        write(make_record(experiment, task, {"name": "ft"}, seed, {metric: 0.70 + seed / 100}))
    claim = next(c for c in evaluate(build_table(TABLES[experiment], runs_dir))
                 if "matches or beats full fine-tuning" in c.text)
    assert claim.verdict == NOT_HELD
    assert claim.why.startswith(f"{why} As trained here: ")
    assert ("GPT-2" in claim.why) == (experiment == "table_e2e")


GPU = {"gpu": "NVIDIA H200", "cpu": "AMD EPYC", "cpu_count": 16}
CPU = {"cpu": "AMD EPYC", "cpu_count": 2}


@pytest.mark.parametrize("qv_machine, q_machine, bracket", [
    (CPU, CPU, None),
    (GPU, CPU, "[W_q,W_v ran on GPU: NVIDIA H200 (bf16 autocast), W_q on CPU: AMD EPYC, 2 cores (fp32)]"),
])
def test_a_comparison_across_machines_says_where_each_side_ran(runs_dir, write, make_record, qv_machine, q_machine,
                                                                bracket):
    for record in weight_type_records(make_record, qv=0.6, q=0.5):
        record["env"]["hardware"] = qv_machine if "W_v" in record["method"]["ranks"] else q_machine
        write(record)
    claim = next(c for c in evaluate(build_table(TABLES["table_weight_type"], runs_dir))
                 if c.text.startswith("WikiSQL: adapting W_q,W_v (r=4) beats W_q alone"))
    assert claim.verdict == HELD  # no device pairs measured an offset: the evidence says so, and where each ran
    assert ("device offset not estimated" in claim.evidence) == (bracket is not None)
    assert (bracket in claim.evidence) if bracket else ("ran on" not in claim.evidence)


def test_a_cell_that_barely_trained_is_listed_and_judges_no_claim(runs_dir, write, make_record):
    for record in weight_type_records(make_record, qv=0.6, q=0.3):
        broken = record["method"]["ranks"] == {"W_q": 8} and record["seed"] == 1  # loss 12.4 → 12.3
        record["training"] = {"steps": 250, "loss_curve": [[10, 12.4 if broken else 2.3]],
                              "final_loss": 12.3 if broken else 0.9}
        write(record)
    result = build_table(TABLES["table_weight_type"], runs_dir)
    claim = next(c for c in evaluate(result)
                 if c.text.startswith("WikiSQL: adapting W_q,W_v (r=4) beats W_q alone"))
    assert claim.verdict == INCONCLUSIVE  # 60 against 30 would be held, but W_q's fit failed at seed 1
    assert "W_q's training failed (seed 1: barely trained, loss 12.40 at step 10 → 12.30 at step 250)" in claim.evidence
    listed = [line for line in incomplete_lines(result) if line.startswith("- BARELY TRAINED")]
    assert len(listed) == 1 and "WikiSQL (±0.5%) × W_q, seed 1" in listed[0]


@pytest.mark.parametrize(("curve", "listed"), [
    ([[10, 1.2], [20, 0.45], [60, 0.5], [70, 3.96], [250, 0.29]],
     "training loss 0.45 → 3.96 at step 70, 0.29 at step 250 (more than 2× its lowest before)"),
    ([[10, 1.2], [20, 0.45], [60, 0.85], [250, 0.29]], None),  # up, but less than twice its lowest
    ([[10, 1.2], [20, 0.45]], None),  # falling
])
def test_a_loss_spike_is_listed_and_the_run_still_judges_claims(runs_dir, write, make_record, curve, listed):
    for record in weight_type_records(make_record, qv=0.6, q=0.3):
        spiked = record["method"]["ranks"] == {"W_q": 8} and record["seed"] == 1
        record["training"] = {"steps": 250, "loss_curve": curve if spiked else [[10, 1.2], [250, 0.3]],
                              "final_loss": curve[-1][1] if spiked else 0.3}
        write(record)
    result = build_table(TABLES["table_weight_type"], runs_dir)
    claim = next(c for c in evaluate(result) if c.text.startswith("WikiSQL: adapting W_q,W_v (r=4) beats W_q alone"))
    assert claim.verdict == HELD  # the spiked run trained on: its score stands
    lines = [line for line in incomplete_lines(result) if line.startswith("- LOSS SPIKE")]
    assert len(lines) == (listed is not None)
    assert listed is None or ("WikiSQL (±0.5%) × W_q, seed 1" in lines[0] and listed in lines[0])


def mnli_predictions(correct: int, premise: str = "p") -> str:
    """200 matched rows (then 200 mismatched), the first `correct` matched ones right."""
    rows = [{"premise": f"{premise}{i}", "hypothesis": "h", "subset": "matched", "correct": i < correct}
            for i in range(200)]
    rows += [{"premise": f"m{i}", "hypothesis": "h", "subset": "mismatched", "correct": True} for i in range(200)]
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.mark.parametrize("predictions,verdict,evidence", [
    # no predictions saved: the binomial error of each cell, as if independent: ± 9.78 points
    (None, INCONCLUSIVE, "Δ = +4.00 ± 9.78 (95 %, t with ∞ df; SE: seeds 0.00 pooled over 2 cells, "
                         "eval set 4.99 unpaired)"),
    # the same examples, W_q,W_v right on 8 more of them and wrong on none that W_q gets right: a
    # paired test sees 8 discordant examples, all one way (± 2.72 points)
    ("paired", HELD, "Δ = +4.00 ± 2.72 (95 %, t with ∞ df; SE: seeds 0.00 pooled over 2 cells, "
                     "eval set 1.39 paired over 200 examples)"),
    # predictions of different examples cannot be paired: back to the unpaired bound
    ("other examples", INCONCLUSIVE, "Δ = +4.00 ± 9.78 (95 %, t with ∞ df; SE: seeds 0.00 pooled over 2 cells, "
                                     "eval set 4.99 unpaired)"),
])
def test_an_accuracy_gap_is_judged_against_the_evaluation_sets_error(runs_dir, write, make_record,
                                                                     predictions, verdict, evidence):
    # seeds agree exactly, so the seed spread alone would call any gap a win
    for seed in range(2):
        for ranks, correct, premise in (({"W_q": 4, "W_v": 4}, 108, "p"),
                                        ({"W_q": 8}, 100, "q" if predictions == "other examples" else "p")):
            record = make_record("table_weight_type", "mnli", {"name": "lora", "ranks": ranks}, seed,
                                 {"accuracy_m": correct / 200})
            path = write(record | {"eval_notes": {"examples": {"matched": 200, "mismatched": 200}}})
            if predictions:
                (path.parent / "predictions.jsonl").write_text(mnli_predictions(correct, premise))
    claims = evaluate(build_table(TABLES["table_weight_type"], runs_dir))
    claim = next(c for c in claims if c.text.startswith("MultiNLI: adapting W_q,W_v (r=4) beats W_q alone"))
    assert (claim.verdict, claim.evidence.split(": ", 1)[1]) == (verdict, evidence)


@pytest.mark.parametrize("right, evidence", [
    # W_q,W_v: both seeds right on 108 examples, not the same ones (0-107 and 8-115), so 16 examples
    # have a per-example seed mean of 50 and a seed variance of 5,000; W_q: both seeds right on 0-99.
    # d_i: -50 (8 examples), +100 (8), +50 (8), 0 (176): var(d) = (120,000 - 200·4²) / 199 = 586.9.
    # W_q,W_v's seed noise in it, mean_i(s_i²)/n = (16·5,000/200)/2 = 200, is left out:
    # SE_eval = sqrt((586.9 - 200) / 200) = 1.39 (with it, 1.71)
    ((range(0, 108), range(8, 116), range(100), range(100)), "eval set 1.39 paired over 200 examples)"),
    # every example right in one seed of each cell and wrong in the other: nothing but seed noise
    ((range(100), range(100, 200), range(100), range(100, 200)),
     "eval set 0.00 paired over 200 examples; the paired spread is no larger than the seeds' own noise in it, so 0: "
     "the seed term counts that noise)"),
])
def test_the_evaluation_sets_error_leaves_out_the_seed_noise_the_seed_term_counts(runs_dir, write, make_record,
                                                                                   right, evidence):
    qv, q = {"W_q": 4, "W_v": 4}, {"W_q": 8}
    for (ranks, seed), correct in zip(((qv, 0), (qv, 1), (q, 0), (q, 1)), right):
        record = make_record("table_weight_type", "mnli", {"name": "lora", "ranks": ranks}, seed,
                             {"accuracy_m": len(correct) / 200})
        path = write(record | {"eval_notes": {"examples": {"matched": 200, "mismatched": 200}}})
        rows = [{"premise": f"p{i}", "hypothesis": "h", "subset": "matched", "correct": i in correct} for i in range(200)]
        (path.parent / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    claims = evaluate(build_table(TABLES["table_weight_type"], runs_dir))
    claim = next(c for c in claims if c.text.startswith("MultiNLI: adapting W_q,W_v (r=4) beats W_q alone"))
    assert claim.evidence.endswith(evidence)


@pytest.mark.parametrize("metric,notes,size", [
    ("accuracy_m", {"examples": {"matched": 200, "mismatched": 150}}, 200),
    ("accuracy_mm", {"examples": {"matched": 200, "mismatched": 150}}, 150),
    ("lf_accuracy", {"examples": 200, "unparseable": 17}, 200),
    ("bleu", {"mrs": 200, "references": 1666}, None),  # a corpus metric: no binomial error
    ("accuracy_m", {}, None),  # a record that did not keep the count
])
def test_sample_size_of_a_metric(make_record, tmp_path, metric, notes, size):
    record = make_record("table_methods", "mnli", {"name": "lora"}, 0, {metric: 0.5}) | {"eval_notes": notes}
    assert parse_record(tmp_path / "record.json", record).sample_size(metric) == size


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_has_claims_even_when_empty(runs_dir, name):
    claims = evaluate(build_table(TABLES[name], runs_dir))
    assert claims and all(c.verdict == INCONCLUSIVE for c in claims)


@pytest.mark.parametrize("second_premise,expected", [("p", (100.0, 50.0, 0.0)), ("q", None)])
def test_a_cells_example_scores_are_the_mean_over_its_seeds(runs_dir, write, make_record, second_premise, expected):
    # seed 0 gets examples 0 and 1 right, seed 1 only example 0; seeds scored on other examples do not mix
    for seed, correct, premise in ((0, 2, "p"), (1, 1, second_premise)):
        record = make_record("table_weight_type", "mnli", {"name": "lora", "ranks": {"W_q": 8}}, seed,
                             {"accuracy_m": correct / 200})
        (write(record).parent / "predictions.jsonl").write_text(mnli_predictions(correct, premise))
    examples = build_table(TABLES["table_weight_type"], runs_dir).stats("mnli", "W_q")["examples"]
    assert (examples.scores[:3] if examples else None) == expected


@pytest.mark.parametrize("metric, margin", [("accuracy_m", 2.0), ("lf_accuracy", 2.0), ("bleu", 1.0), ("nist", 0.1),
                                            ("exact_match", None)])
def test_each_metric_has_a_stated_equivalence_margin_or_none_is_assumed(metric, margin):
    from peftrepro.report.claims import equivalence_margin

    if margin is None:
        with pytest.raises(ValueError, match="no equivalence margin is stated for metric 'exact_match'"):
            equivalence_margin(metric)
    else:
        assert equivalence_margin(metric) == margin


def test_a_cells_bootstrap_seed_noise_is_what_more_seeds_would_average_away():
    from peftrepro.report.cells import Resampled, _mean_resampled

    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1, 4000)  # the MRs' draw, common to every seed: what SE_eval is for
    seeds = [Resampled("mrs", 60 + seed + shared + rng.normal(0, 2, 4000)) for seed in range(2)]  # + each seed's own
    cell = _mean_resampled(seeds)
    assert cell.values.var(ddof=1) == pytest.approx(1 + 4 / 2, rel=0.1)  # the seeds' own noise, halved, inflates it
    assert cell.values.var(ddof=1) - cell.seed_noise == pytest.approx(1, abs=0.15)
