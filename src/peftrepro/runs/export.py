"""`peftrepro export RUN_DIR OUT --format peft|merged`: a finished run's weights in a form the
ecosystem loads (peftrepro.methods.interop says which method has which form).

    peft     adapter_config.json + adapter_model.safetensors (+ peft's README.md): `PeftModel.from_pretrained(base,
             OUT)` (LoRA and QLoRA; PreEmbed without infix and prompt tuning as peft prompt tuning)
    merged   the base model with the update folded in, with its tokenizer: `AutoModelForCausalLM.from_pretrained(OUT)`
             (LoRA, FT, FT-Top-k, BitFit, magnitude and movement pruning)

Both also write `peftrepro-export.json`: which run, record and method the files come from. Every input
is checked before anything is loaded (the run's record and weights, the format against the method,
OUT new or empty), the files are written to a temporary folder beside OUT and renamed into place,
so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from peftrepro.errors import ConfigError
from peftrepro.paths import resolve_path
from peftrepro.runs import records

PROVENANCE_FILE = "peftrepro-export.json"


def export_run(run_dir: str | Path, out: str | Path, format: str) -> Path:
    """Export the run at `run_dir` to the new folder `out`; returns `out`."""
    from peftrepro.methods import load_adapter
    from peftrepro.methods.interop import check_exportable, export_peft, merged_model
    from peftrepro.models import load_model, save_hf_directory

    run_dir, out = resolve_path(run_dir).resolve(), resolve_path(out).resolve()  # relative: from the project
    record = _finished_record(run_dir)
    method = _saved_method(run_dir, record)
    check_exportable(method, format)
    _require_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-export-{out.name}-", dir=out.parent))
    try:
        model, tokenizer = load_model(record["config"]["model"])
        applied = load_adapter(model, run_dir)
        if format == "peft":
            export_peft(applied, staging, base_model_name(record["config"]["model"]))
        else:
            save_hf_directory(merged_model(applied), tokenizer, staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(_provenance(run_dir, record, format), indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def base_model_name(model_cfg: Mapping[str, Any]) -> str | None:
    """What a peft adapter names as its base: the hub id or directory the run loaded; for a GGUF
    backbone, the dequantised copy the suite caches; None for a random model (no base to load)."""
    from peftrepro.models import gguf_cache

    if model_cfg.get("source") == "hub":
        local = resolve_path(str(model_cfg.get("name_or_path")))  # a relative directory counts from the project
        return str(local) if local.exists() else str(model_cfg.get("name_or_path"))
    if model_cfg.get("source") == "gguf_package":
        return str(gguf_cache(model_cfg))
    return None


def _finished_record(run_dir: Path) -> dict[str, Any]:
    from peftrepro.methods.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    record = records.read_record(run_dir)
    if record is None:
        raise ConfigError(f"{run_dir} holds no readable {records.RECORD_FILE}: give a run folder, "
                          "results/runs/<experiment>/<run_key>")
    if record.get("status") not in ("ok", records.UNSCORED):
        raise ConfigError(f"{run_dir}: the run's status is {record.get('status')!r}; only a finished run has weights "
                          "to export")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(f"{run_dir} has no weights ({', '.join(missing)} missing): {_why_no_weights(record)}")
    return record


def _why_no_weights(record: Mapping[str, Any]) -> str:
    method = (record.get("method") or {}).get("name")
    if record.get("reused_from"):
        return f"the run reuses the record of {record['reused_from']}, whose folder holds the weights"
    if method in ("none", "peft_adapter"):
        return f"method {method!r} trains nothing, so there is nothing to export"
    if not record.get("weights_kept", True):
        return "it ran with keep_weights=false"
    return ("weights are not committed with the results: they stay on the machine that trained the run; rerun it "
            "there (force=true) or export it where it ran")


def _saved_method(run_dir: Path, record: Mapping[str, Any]) -> Any:
    from peftrepro.methods import make_method_config
    from peftrepro.methods.checkpoint import CONFIG_FILE

    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    return make_method_config(saved["method"], saved["options"])


def _require_new_folder(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; export into a new folder")


def _provenance(run_dir: Path, record: Mapping[str, Any], format: str) -> dict[str, Any]:
    return {"format": format, "run_dir": str(run_dir), "run_key": record.get("run_key"),
            "experiment": record.get("experiment"), "method": record.get("method"), "model": record.get("model"),
            "metrics": record.get("metrics"), "git": (record.get("env") or {}).get("git"),
            **({"trained_in": record["trained_in"]} if record.get("trained_in") else {}),  # the training's own run
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
