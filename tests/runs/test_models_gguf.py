"""GGUF loading (peftrepro.models): a converted cache serves later loads, whether the GGUF came from
the installed package or from a file (`load_gguf`, used by bench.py --gguf and by machines that have
the file but not the package). transformers' own GGUF parsing is replaced by a tiny model here."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftrepro import models
from peftrepro.errors import ModelLoadError


@pytest.fixture
def conversions(monkeypatch, tiny_llama):
    """Replace transformers' loading: records where each load read from, returns a tiny Llama."""
    calls: list[dict] = []

    def fake_from_pretrained(where: str, **kwargs):
        calls.append({"where": where, **kwargs})
        return tiny_llama, models.byte_level_tokenizer()

    monkeypatch.setattr(models, "_from_pretrained", fake_from_pretrained)
    return calls


def test_a_gguf_file_is_converted_once_then_read_from_the_cache(conversions, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache" / "smollm2-135m"
    models.load_gguf(gguf, cache)
    assert conversions[-1] == {"where": str(tmp_path), "gguf_file": "model.gguf"}
    assert (cache / "config.json").is_file() and (cache / "model.safetensors").is_file()
    models.load_gguf(gguf, cache)
    assert conversions[-1] == {"where": str(cache)}


def test_the_package_source_needs_no_package_once_the_cache_exists(conversions, tmp_path: Path) -> None:
    cache = tmp_path / "models" / "smollm2-135m"
    models.load_gguf(_a_gguf(tmp_path), cache)  # a converted copy, e.g. carried to a machine without the package
    model_cfg = {"name": "smollm2-135m", "source": "gguf_package", "package": "no_such_package",
                 "gguf_file": "x.gguf", "cache_dir": str(tmp_path / "models")}
    models.load_model(model_cfg)
    assert conversions[-1] == {"where": str(cache)}


def test_without_cache_or_package_the_error_names_the_package(conversions, tmp_path: Path) -> None:
    model_cfg = {"name": "m", "source": "gguf_package", "package": "no_such_package", "gguf_file": "x.gguf",
                 "cache_dir": str(tmp_path / "models")}
    with pytest.raises(ModelLoadError, match="no_such_package"):
        models.load_model(model_cfg)


def test_a_missing_gguf_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        models.load_gguf(tmp_path / "absent.gguf")


def _a_gguf(folder: Path) -> Path:
    path = folder / "model.gguf"
    path.write_bytes(b"GGUF")
    return path
