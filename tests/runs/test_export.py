"""A finished run's weights, exported for peft and for transformers alone, and a peft adapter evaluated
as a run; bad input is one clear error and writes nothing."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftrepro.cli import main
from peftrepro.errors import PeftReproError
from peftrepro.methods import load_adapter
from peftrepro.models import load_model
from peftrepro.runs.execute import run_one
from peftrepro.runs.export import PROVENANCE_FILE, base_model_name, export_run
from peftrepro.runs.plan import resolved_config
from peftrepro.runs.records import run_key

peft = pytest.importorskip("peft")

IDS = torch.tensor([[72, 101, 108, 108, 111, 32, 119]])
SHORT = ("task=mnli", "task.max_train_examples=8", "train.epochs=1", "train.eval_every_epoch=false")


@pytest.fixture(scope="module")
def runs(compose_config, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """One short smoke run per method exported below (tiny GPT-2), and a LoRA run without its weights."""
    results = tmp_path_factory.mktemp("results")
    done = {}
    for name, overrides in {"lora": ["method=lora"], "ft": ["method=ft"], "ft_top": ["method=ft_top2"],
                            "bitfit": ["method=bitfit"], "adapter_h": ["method=adapter_h"],
                            "no_weights": ["method=lora", "keep_weights=false", "seed=1"]}.items():
        record = run_one(compose_config("profile=smoke", f"results_dir={results}", "train.progress=false", *SHORT,
                                        *overrides))
        done[name] = record, results / "runs" / "adhoc" / record["run_key"]
    return done


def _suite_logits(record: dict, run_dir: Path) -> torch.Tensor:
    model, _ = load_model(record["config"]["model"])
    load_adapter(model, run_dir)
    return model.eval()(input_ids=IDS).logits


def test_a_lora_run_exports_as_a_peft_adapter_with_the_runs_logits(runs, tmp_path):
    record, run_dir = runs["lora"]
    out = export_run(run_dir, tmp_path / "peft", "peft")
    base, _ = load_model(record["config"]["model"])
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, _suite_logits(record, run_dir), rtol=0, atol=1e-5)
    assert '"run_key": "' + record["run_key"] in (out / PROVENANCE_FILE).read_text()


@pytest.mark.parametrize("method", ["lora", "ft", "ft_top", "bitfit"])
def test_a_merged_checkpoint_loads_with_transformers_alone(runs, method, tmp_path):
    record, run_dir = runs[method]
    out = export_run(run_dir, tmp_path / "merged", "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert AutoTokenizer.from_pretrained(out)("hello").input_ids
    torch.testing.assert_close(merged(input_ids=IDS).logits, _suite_logits(record, run_dir), rtol=0, atol=1e-5)


def test_a_peft_adapter_is_evaluated_as_a_run(runs, compose_config, tmp_path):
    record, _ = runs["lora"]
    base, _ = load_model(record["config"]["model"])
    adapter = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["attn.c_attn"],
                                                         fan_in_fan_out=True))
    adapter.save_pretrained(str(tmp_path / "adapter"))
    evaluated = run_one(compose_config("profile=smoke", f"results_dir={tmp_path / 'results'}", "train.progress=false",
                                       *SHORT, "method=peft_adapter", f"method.path={tmp_path / 'adapter'}"))
    assert evaluated["status"] == "ok" and evaluated["metrics"]["accuracy_m"] >= 0
    assert evaluated["params"]["trainable"] == 0 and evaluated["training"]["steps"] == 0
    assert evaluated["method"]["loaded"]["adapter"] == str(tmp_path / "adapter")
    assert len(evaluated["method"]["loaded"]["sha256"]) == 64


def test_a_peft_adapters_run_key_follows_its_files(runs, compose_config, tmp_path):
    """Exported again into the same folder: another run (not a skip with the old adapter's metrics)."""
    base, _ = load_model(runs["lora"][0]["config"]["model"])

    def save(folder: Path, seed: int) -> Path:
        torch.manual_seed(seed)  # LoRA's A is drawn at random: another seed, other weights
        config = peft.LoraConfig(r=2, target_modules=["attn.c_attn"], fan_in_fan_out=True)
        peft.get_peft_model(copy.deepcopy(base), config).save_pretrained(str(folder))
        return folder

    def key(folder: Path) -> str:
        return run_key(resolved_config(compose_config("profile=smoke", *SHORT, "method=peft_adapter",
                                                      f"method.path={folder}")))

    first = key(save(tmp_path / "adapter", seed=0))
    assert key(tmp_path / "adapter") == first
    shutil.rmtree(tmp_path / "adapter")
    assert key(save(tmp_path / "adapter", seed=1)) != first


def test_an_adapter_that_does_not_fit_the_run_is_one_clear_error_and_writes_nothing(compose_config, tiny_model,
                                                                                     tmp_path):
    adapter = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=2, target_modules=["self_attn.q_proj"]))
    adapter.save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(PeftReproError, match=r"adapts `model\.layers\.0\.self_attn\.q_proj`, which is not in this "
                                             r"model's blocks `transformer\.h\.<i>`"):
        run_one(compose_config("profile=smoke", f"results_dir={tmp_path / 'results'}", *SHORT, "method=peft_adapter",
                               f"method.path={tmp_path / 'adapter'}"))
    # nothing but the run's claim (an empty lock file under results/.locks)
    assert not [path for path in (tmp_path / "results").rglob("*") if path.is_file() and ".locks" not in path.parts]


def _refused(arguments: list[str], capsys) -> str:
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("peftrepro: error: ")
    return error


@pytest.mark.parametrize("run,format,message", [
    ("adapter_h", "peft", r"peft cannot express method 'adapter_h'; nor can --format merged"),
    ("adapter_h", "merged", r"'adapter_h' adds computation that does not fold into the weights"),
    ("ft", "peft", r"peft cannot express method 'ft'; use --format merged"),
    ("no_weights", "peft", r"has no weights \(adapter\.safetensors, method\.json missing\): it ran with "
                           r"keep_weights=false"),
])
def test_what_cannot_be_exported_is_one_clear_error_and_nothing_is_written(runs, run, format, message, tmp_path,
                                                                          capsys):
    error = _refused(["export", str(runs[run][1]), str(tmp_path / "out"), "--format", format], capsys)
    assert re.search(message, error), error
    assert list(tmp_path.iterdir()) == []


def test_export_needs_a_run_folder_and_a_new_output_folder(runs, tmp_path, capsys):
    assert "holds no readable record.json" in _refused(["export", str(tmp_path), str(tmp_path / "out")], capsys)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    error = _refused(["export", str(runs["lora"][1]), str(tmp_path / "taken")], capsys)
    assert "exists and is not an empty folder" in error
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["file"]


def test_a_run_without_weights_says_where_they_are(runs):
    record, run_dir = runs["no_weights"]
    assert record["weights_kept"] is False and record["checkpoint_bytes"] > 0
    assert not (run_dir / "adapter.safetensors").exists()
    assert runs["lora"][0]["weights_kept"] is True


@pytest.mark.parametrize("model_cfg,expected", [
    ({"source": "hub", "name_or_path": "HuggingFaceTB/SmolLM2-135M"}, "HuggingFaceTB/SmolLM2-135M"),  # a hub id
    ({"source": "hub", "name_or_path": "{tmp}/local-model"}, "{tmp}/local-model"),  # a directory the run loaded
    ({"source": "gguf_package", "cache_dir": "{tmp}/cache", "name": "smollm2-135m"}, "{tmp}/cache/smollm2-135m"),
    ({"source": "random", "family": "gpt2"}, None),  # nothing for peft to load the adapter onto
])
def test_an_adapter_names_the_base_its_run_loaded(model_cfg, expected, tmp_path):
    (tmp_path / "local-model").mkdir()
    model_cfg = {key: value.format(tmp=tmp_path) for key, value in model_cfg.items()}
    assert base_model_name(model_cfg) == (expected.format(tmp=tmp_path) if expected else None)


@pytest.mark.parametrize("format,writer", [("peft", "export_peft"), ("merged", "save_hf_directory")])
def test_an_export_failing_while_it_writes_leaves_nothing_behind(runs, format, writer, monkeypatch, tmp_path):
    import peftrepro.methods.interop as interop
    import peftrepro.models as models

    def write_some_then_fail(*args, **kwargs):
        folder = next(arg for arg in args if isinstance(arg, Path))
        (folder / "adapter_model.safetensors").write_bytes(b"half")  # a half-written file in the staging folder
        raise OSError("disk full")

    monkeypatch.setattr(interop if writer == "export_peft" else models, writer, write_some_then_fail)
    (tmp_path / "exports").mkdir()
    with pytest.raises(OSError, match="disk full"):
        export_run(runs["lora"][1], tmp_path / "exports" / "out", format)
    assert list((tmp_path / "exports").iterdir()) == []  # neither OUT nor the staging folder beside it
