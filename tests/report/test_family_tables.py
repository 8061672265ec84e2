"""The tables of the other papers of the family: QLoRA (memory beside accuracy) and pruning (measured
sparsity checked against its target), from hand-made records."""

from __future__ import annotations

import pandas as pd
import pytest

from peftrepro.report import claims, render
from peftrepro.report import page as report
from peftrepro.report.cells import build_table
from peftrepro.report.specs import BASE_MB, TABLES

LORA8 = {"name": "lora", "ranks": {"W_q": 8, "W_v": 8}, "quantize": None}


def stored(quant_type: str, double_quant: bool) -> dict:
    return {**LORA8, "quantize": {"quant_type": quant_type, "double_quant": double_quant, "compute_dtype": "fp32",
                                  "blocksize": 64}}


@pytest.fixture
def qlora_record(make_record):
    def build(method: dict, task: str, seed: int, score: float, frozen_mb: float, peak_mb: float) -> dict:
        metric = {"e2e": "bleu", "mnli": "accuracy_m"}[task]
        record = make_record("table_qlora", task, method, seed, {metric: score}, profile="mini")
        record["weights"] = {"frozen_bytes": int(frozen_mb * 1e6), "trainable_bytes": 1_800_000,
                             "block_linear_density": 1.0}
        record["memory"] = {"peak_bytes": int(4e9), "train_peak_bytes": int(peak_mb * 1e6)}
        return record
    return build


@pytest.fixture
def pruning_record(make_record):
    def build(method: str, remaining: float | None, seed: int, accuracy: float, measured: float | None = None) -> dict:
        options = {"name": method} if remaining is None else {"name": method, "remaining": remaining}
        record = make_record("table_pruning", "mnli", options, seed, {"accuracy_m": accuracy}, profile="mini")
        density = 0.9997 if remaining is None else (remaining if measured is None else measured)
        record["weights"] = {"frozen_bytes": 0, "trainable_bytes": 1, "block_linear_density": density}
        if remaining is not None:
            record["pruning"] = {"target_remaining": remaining, "measured_remaining": density}
        return record
    return build


def test_qlora_rows_carry_base_bytes_and_peak_memory_beside_each_task(runs_dir, write, qlora_record):
    for seed in (0, 1):
        write(qlora_record(LORA8, "mnli", seed, 0.60, 538.1, 2100 + seed))
        write(qlora_record(stored("nf4", True), "mnli", seed, 0.59, 168.4, 1500 + seed))
        write(qlora_record(stored("nf4", True), "e2e", seed, 0.50, 168.4, 1700))
    result = build_table(TABLES["table_qlora"], runs_dir, "mini", [0, 1])
    assert render.format_cell(result.spec, result.stats("lora", BASE_MB), 2) == "538.1 MB"
    assert render.format_cell(result.spec, result.stats("nf4_dq", BASE_MB), 2) == "168.4 MB"  # from both tasks
    assert result.stats("nf4_dq", BASE_MB)["status"] == "ok"
    peak = result.stats("nf4_dq", "peak_mnli")
    assert peak["mean"] == pytest.approx(1500.5) and peak["n"] == 2 and pd.isna(peak["metric"])
    mnli = result.stats("nf4_dq", "mnli")
    assert mnli["mean"] == pytest.approx(59.0) and pd.isna(mnli["paper"])  # QLoRA prints "–" for NF4 + DQ on GLUE
    assert result.stats("lora", "mnli")["paper"] == 88.8 and result.stats("fp4", "e2e")["paper"] == 40.3
    assert pd.isna(result.stats("nf4", "mnli")["paper"])  # no NF4 row without DQ in the paper
    header = render.layout(result).columns  # the paper's value is another task's: its column says which
    assert "E2E BLEU (paper: SNI RougeL, T5-80M)" in header and "MNLI-m Acc. (%) (paper: GLUE, RoBERTa-large)" in header
    # a run's cells, as the page names them, are its metric cells: not its memory or its bytes
    (key,) = {r.run_key for r in result.records if r.task == "e2e" and r.seed == 0}
    assert result.cells_of(key) == [("nf4_dq", "e2e")]


def test_a_qlora_run_whose_4bit_base_was_misread_shows_no_score_and_says_why(runs_dir, write, qlora_record):
    for seed, misread in ((0, {}), (1, {"self_attn.q_proj": 3, "self_attn.o_proj": 3})):
        record = qlora_record(stored("nf4", True), "mnli", seed, 0.59, 168.4, 1500)
        write(record | {"quantized": {"quantized_layers": 21, "not_quantized": {}, "misread": misread}})
    cell = build_table(TABLES["table_qlora"], runs_dir, "mini", [0, 1]).stats("nf4_dq", "mnli")
    assert cell["n"] == 1 and cell["mean"] == pytest.approx(59.0)
    assert "read 6 of its 4-bit layers back as other weights than it stored (self_attn.q_proj, self_attn.o_proj)" \
        in cell["problems"][0]


def test_a_full_precision_lora_record_of_before_quantize_existed_is_the_lora_row(runs_dir, write, qlora_record):
    old = {key: value for key, value in LORA8.items() if key != "quantize"}
    write(qlora_record(old, "mnli", 0, 0.6, 538.1, 2100))
    assert build_table(TABLES["table_qlora"], runs_dir, "mini", [0]).stats("lora", "mnli")["n"] == 1


def test_qlora_claims_compare_storage_types_per_task(runs_dir, write, qlora_record):
    for seed in (0, 1):
        for method, accuracy in ((LORA8, 0.60), (stored("nf4", True), 0.605), (stored("nf4", False), 0.60),
                                 (stored("fp4", False), 0.40)):
            write(qlora_record(method, "mnli", seed, accuracy + seed * 0.002, 200, 1500))
    verdicts = {c.text: c.verdict for c in claims.evaluate(build_table(TABLES["table_qlora"], runs_dir, "mini", [0, 1]))}
    assert verdicts["MultiNLI: NF4 beats FP4 (both without double quantisation)"] == claims.HELD
    assert verdicts["E2E (BLEU): NF4 beats FP4 (both without double quantisation)"] == claims.INCONCLUSIVE  # no run


def test_a_pruning_run_off_its_target_sparsity_shows_no_accuracy_and_says_why(runs_dir, write, pruning_record):
    write(pruning_record("magnitude_pruning", 0.1, 0, 0.55))
    write(pruning_record("movement_pruning", 0.1, 0, 0.58, measured=0.123))
    write(pruning_record("ft", None, 0, 0.70))
    result = build_table(TABLES["table_pruning"], runs_dir, "mini", [0])
    assert result.stats("magnitude_10", "mnli")["mean"] == pytest.approx(55.0)
    assert result.stats("magnitude_10", "remaining")["mean"] == pytest.approx(10.0)
    assert result.stats("ft", "remaining")["mean"] == pytest.approx(99.97)  # measured on the dense model too
    off = result.stats("movement_10", "mnli")
    assert off["status"] == "failed" and off["n"] == 0
    assert "measured remaining weights 12.30 % vs the target 10 %" in off["problems"][0]
    assert result.stats("movement_10", "remaining")["mean"] == pytest.approx(12.3)  # shown, so the gap is visible
    lines = "\n".join(render.incomplete_lines(result))
    assert "FAILED Movement (MvP), 10 % remaining × MNLI-m Acc. (%): measured remaining weights 12.30 %" in lines
    assert result.stats("ft", "mnli")["paper"] == 84.5 and result.stats("magnitude_3", "mnli")["paper"] == 68.9
    assert pd.isna(result.stats("magnitude_50", "mnli")["paper"])  # Figure 2 only: no printed number


def test_the_largest_weights_pruned_show_on_masked_rows_and_are_not_applicable_to_ft(runs_dir, write,
                                                                                    pruning_record):
    for seed, share in ((0, 0.214), (1, 0.226)):
        record = pruning_record("movement_pruning", 0.8, seed, 0.40)
        write(record | {"pruning": record["pruning"] | {"largest_pruned": share}})
    write(pruning_record("ft", None, 0, 0.70))
    result = build_table(TABLES["table_pruning"], runs_dir, "mini", [0, 1])
    assert render.format_cell(result.spec, result.stats("movement_80", "largest_pruned"), 2) == "22.0 ± 0.8 (n=2)"
    assert result.stats("ft", "largest_pruned")["status"] == "n/a"
    assert render.layout(result).loc[0, "Largest 0.1 % of weights pruned (%, measured)"] == "n/a"
    assert ("ft", "largest_pruned") not in result.incomplete.index  # never counted as missing
    assert "Fine-tuned, dense (100 % remaining) × Largest" not in "\n".join(render.incomplete_lines(result))
    assert result.stats("magnitude_80", "largest_pruned")["status"] == "missing"  # a masked row without its run


def test_a_pruning_run_that_left_matrices_dense_shows_no_accuracy(runs_dir, write, pruning_record):
    record = pruning_record("magnitude_pruning", 0.1, 0, 0.55)
    record["pruning"]["not_pruned"] = {"mlp.experts.gate_up_proj": 98304, "mlp.experts.down_proj": 49152}
    write(record)
    left = build_table(TABLES["table_pruning"], runs_dir, "mini", [0]).stats("magnitude_10", "mnli")
    assert left["status"] == "failed"
    assert "147,456 weights of the blocks' matrices were left dense (mlp.experts.gate_up_proj, " in left["problems"][0]


def test_pruning_claims_on_high_and_low_sparsity(runs_dir, write, pruning_record):
    accuracy = {("magnitude_pruning", 0.1): 0.50, ("movement_pruning", 0.1): 0.60,
                ("magnitude_pruning", 0.8): 0.70, ("movement_pruning", 0.8): 0.60}
    for seed in (0, 1):
        for (method, remaining), value in accuracy.items():
            write(pruning_record(method, remaining, seed, value + seed * 0.004))
        write(pruning_record("ft", None, seed, 0.90 + seed * 0.004))  # not the reference of the 80 % claim
        write(pruning_record("magnitude_pruning", 1.0, seed, 0.705 + seed * 0.004))
    verdicts = {c.text: c.verdict for c in claims.evaluate(build_table(TABLES["table_pruning"], runs_dir, "mini",
                                                                       [0, 1]))}
    assert verdicts["Movement pruning beats magnitude pruning at 10 % remaining weights"] == claims.HELD
    assert verdicts["Movement pruning beats magnitude pruning at 3 % remaining weights"] == claims.INCONCLUSIVE
    assert verdicts["At low sparsity (80 % remaining) magnitude pruning matches or beats movement pruning"] == claims.HELD
    dense = next(text for text in verdicts if "magnitude pruning matches dense fine-tuning" in text)
    assert verdicts[dense] == claims.HELD and "the same trainable weights and rate, all but the blocks frozen" in dense
    table = build_table(TABLES["table_pruning"], runs_dir, "mini", [0, 1])
    assert table.stats("dense_blocks", "remaining")["mean"] == pytest.approx(100.0)
    assert pd.isna(table.stats("dense_blocks", "mnli")["paper"]) and table.stats("ft", "mnli")["paper"] == 84.5


def test_the_report_shows_the_other_papers_tables_once_they_have_runs(runs_dir, write, pruning_record, tmp_path):
    def sections() -> list[str]:
        text = report.render("mini", [0, 1], runs_dir, tmp_path / "tables", tmp_path / "bench")
        return [line for line in text.splitlines() if line.startswith("## ") and ":" in line]

    before = sections()
    assert before and not any(title.startswith(("## QLoRA", "## Pruning")) for title in before)  # the LoRA paper's only
    write(pruning_record("ft", None, 0, 0.70))
    assert sections() == [*before, f"## {TABLES['table_pruning'].title}"]
    text = report.render("mini", [0, 1], runs_dir, tmp_path / "tables", tmp_path / "bench")
    # the commands name a table's make target once it has a run (QLoRA's is still among what is left)
    assert "make table-pruning PROFILE=mini SEEDS=0,1" in text and "make table-qlora PROFILE=mini SEEDS" not in text
    assert "The QLoRA table, which joins this page with its first run (`make table-qlora PROFILE=mini`), needs" in text
