"""Reusing a finished run of another experiment instead of training the same thing twice.

Tables 5 and 6 share three LoRA settings (W_q r=8; W_q,W_v r=4; all four at r=2), written
differently in their experiment files (`ranks: {W_q: 8}` vs `weights: [W_q], r: 8`), so their run
keys differ. Two configs are *equivalent* when their semantic configs (`records.semantic_config`)
agree once each method is in its canonical form (`MethodConfig.canonical`). When a run has no
record of its own but an equivalent "ok" run exists in another experiment, that run's folder is
copied into this experiment's folder, its record naming the original under `reused_from`: every
table still reads its own folder's records, and the copy says where its numbers came from. Its
per-example predictions are read from the original's folder, not kept twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from peftrepro.errors import ConfigError
from peftrepro.runs import records

if TYPE_CHECKING:
    from peftrepro.runs.plan import RunPlan

log = logging.getLogger(__name__)

# weights are machine-local (git-ignored) and can be large: a reused run is a record, not a model;
# its predictions and its kept LoRA factors (lora_factors.safetensors) stay with the original
# (report.records.Record.original_folder), a second copy would only grow the committed results
NOT_COPIED = ("*.safetensors", records.PREDICTIONS_FILE, records.LEGACY_PREDICTIONS_FILE)


def equivalence_key(config: Mapping[str, Any]) -> str:
    """A hash of what the run computes, with the method in canonical form."""
    from peftrepro.methods import make_method_config

    semantic = records.semantic_config(config)
    method = dict(semantic["method"])
    semantic["method"] = make_method_config(str(method.get("name")), method).canonical()
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()


def find_equivalent(plan: RunPlan) -> Path | None:
    """The folder of an "ok" run, in another experiment, equivalent to `plan`; None if none."""
    wanted = equivalence_key(plan.config)
    runs_root = plan.directory.parent.parent
    for path in sorted(runs_root.glob(f"*/*/{records.RECORD_FILE}")):
        if path.parent.parent == plan.directory.parent:
            continue  # this experiment: its own records are found by run key
        record = records.read_record(path.parent)
        if not record or record.get("status") != "ok" or record.get("reused_from") or "config" not in record:
            continue  # reuse originals only, so a copy never hides where the numbers came from
        try:
            if equivalence_key(record["config"]) == wanted:
                return path.parent
        except (ConfigError, KeyError, TypeError):
            continue  # a record of an older schema or a method that no longer exists
    return None


def copy_equivalent(source: Path, plan: RunPlan) -> dict[str, Any]:
    """Copy the run in `source` into `plan.directory` as this experiment's record of `plan`."""
    original = records.read_record(source) or {}
    staging = plan.directory / f".tmp-reuse-{datetime.now().strftime('%Y%m%d%H%M%S%f')}"
    staging.mkdir(parents=True)
    try:
        for item in source.iterdir():
            if item.is_file() and not item.name.startswith(".") and not any(item.match(p) for p in NOT_COPIED):
                shutil.copy2(item, staging / item.name)
        record = {**original, "run_key": plan.key, "experiment": plan.config["experiment"],
                  "config": plan.recorded_config,
                  "method": {"name": plan.method_config.name, **plan.method_config.options()},
                  "reused_from": {"experiment": original.get("experiment"), "run_key": original.get("run_key"),
                                  "reused_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
        records.write_record(staging, record)
        records.move_into(staging, plan.directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("reuse %s: equivalent finished run %s/%s copied (no training)", plan.key,
             original.get("experiment"), original.get("run_key"))
    return record
