"""One run: a composed config in, one record out (`python -m peftrepro.runs`, `peftrepro-run`).

    check    resolve the config, validate every name and number, build the task (cheap; a bad input
             raises ConfigError/DataError here and NOTHING is written)
    skip     results/runs/<experiment>/<run_key>/record.json says ok and force=false -> return it
             (says "unscored", from a run with `scoring: later|auto`: score its saved predictions, no
             training; peftrepro.runs.scoring; a copy whose original was rerun since: copy it again,
             reuse.stale_copy)
    reuse    an equivalent finished run of another experiment -> copy its record; one that trained
             the same way but was evaluated on something else, weights kept -> load those weights
             and only evaluate (peftrepro.runs.reuse; reuse_equivalent_runs=false turns both off)
    device   the run's device; on a machine with several GPUs each job of a sweep claims a GPU of its
             own for the whole run (peftrepro.runs.devices)
    set up   load data, model, apply the method, encode (an input error found here, e.g. a model that
             cannot be found, still writes nothing)
    train    peftrepro.runs.train.fit, evaluating after each epoch when the profile asks; the training
             state is saved every `resume_every_s` and a killed run's rerun continues from its last
             save (peftrepro.runs.resume)
    record   predictions.jsonl.gz, adapter.safetensors + method.json (unless keep_weights=false; the
             checkpoint is still measured), lora_factors.safetensors (A and B of a few layers, when
             `lora_factors` selects the run), then record.json (last, atomic), then the saved training
             state goes;
             with `scoring: later` (or `auto` without Java) a task whose scorer needs Java (E2E)
             leaves its metrics to peftrepro.runs.scoring and the record says "unscored"
Any other exception from set-up on writes a `failed` record with the traceback and is re-raised,
so the job exits non-zero; in a multirun Hydra's launcher goes on with the other jobs and the
sweep exits non-zero at the end.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from omegaconf import DictConfig

from peftrepro.errors import ConfigError, NotApplicableError, PeftReproError
from peftrepro.interfaces import EvalOutput
from peftrepro.paths import resolve_path
from peftrepro.runs import envinfo, records, resume, reuse
from peftrepro.runs.devices import claimed_device
from peftrepro.runs.plan import RunPlan, cpu_threads, plan_run
from peftrepro.runs.timing import PeakMemory
from peftrepro.runs.tracking import Tracker, make_tracker
from peftrepro.runs.train import (
    LoopPosition,
    TrainSettings,
    TrainStats,
    autocast_for,
    fit,
    make_train_state,
    seed_everything,
    total_steps,
    warmup_steps,
)

log = logging.getLogger("peftrepro.runs")


class InjectedFailure(RuntimeError):
    """Raised by `debug.fail_at` (tests of failure isolation)."""


def run_one(cfg: DictConfig | Mapping[str, Any], jobs_at_once: int = 1, job: int | None = None) -> dict[str, Any]:
    """Run `cfg` to a record (or return the finished record of an identical earlier run). `jobs_at_once`:
    how many runs the launcher runs side by side on this machine (the CPU thread policy divides by it);
    `job`: the job number within a multirun, which picks the job's GPU on a machine with several
    (peftrepro.runs.devices); None for a single run."""
    # The commit of the code this process runs: read before training (cached), since a commit made
    # while a long run trains must not be credited with its numbers.
    envinfo.git_state()
    resume.code_digest()  # likewise the code a saved training state must match
    plan = plan_run(cfg)
    with records.claimed(plan.config["results_dir"], str(plan.config["experiment"]), plan.key) as mine:
        if not mine:  # another live process (a second sweep, a retry) is making this run now
            log.warning("skip %s: another process is running it now (%s); rerun the sweep after it ends",
                        plan.key, plan.directory)
            return {"run_key": plan.key, "status": "running elsewhere"}
        return _claimed_run(plan, jobs_at_once, job)


def _claimed_run(plan: RunPlan, jobs_at_once: int = 1, job: int | None = None) -> dict[str, Any]:
    """Skip, score, reuse or run `plan`, holding its claim (nothing else writes in its folder)."""
    force, finished = plan.config.get("force"), records.is_finished(plan.directory)
    if force or finished:  # a forced run starts afresh; a finished one needs no saved training state
        resume.discard(plan.directory)
    if not force and finished:
        record = records.read_record(plan.directory) or {}
        original = reuse.stale_copy(plan, record)
        if original is None:
            log.info("skip %s: finished record at %s (force=true reruns it)", plan.key, plan.directory)
            return record
        log.info("refresh %s: its original %s was rerun since it was copied", plan.key, original)
        return reuse.copy_equivalent(original, plan) or record
    if not force and records.status_of(plan.directory) == records.UNSCORED:
        return _score_unscored(plan)
    if problem := records.record_problem(plan.directory):
        log.warning("%s is unreadable (%s): running %s again", plan.directory / records.RECORD_FILE, problem, plan.key)
    if not force and plan.config.get("reuse_equivalent_runs", True):
        equivalent = reuse.find_equivalent(plan)
        if equivalent is not None and (copied := reuse.copy_equivalent(equivalent, plan)) is not None:
            resume.discard(plan.directory)  # the copy stands for this run: a state of its own is moot
            return copied
        trained = reuse.find_trained(plan)
        if trained is not None:
            log.info("run %s -> %s: evaluating the weights trained by %s (same training, seed and data)",
                     plan.key, plan.directory, trained.folder)
            return _Run(plan, jobs_at_once=jobs_at_once, job=job, trained_in=trained).execute()
    log.info("run %s -> %s", plan.key, plan.directory)
    return _Run(plan, jobs_at_once=jobs_at_once, job=job).execute()


def _score_unscored(plan: RunPlan) -> dict[str, Any]:
    """A run trained and decoded earlier without scoring: score it now, or leave it for later."""
    from peftrepro.runs.scoring import score_saved

    if plan.defers_scoring:
        log.info("skip %s: predictions saved, scoring deferred (scoring=%s) at %s", plan.key,
                 plan.config.get("scoring"), plan.directory)
        return records.read_record(plan.directory) or {}
    log.info("score %s: saved predictions at %s (no training)", plan.key, plan.directory)
    return score_saved(plan.directory, plan.task)


@dataclass
class _Run:
    """The state of one run while it executes; becomes the record."""

    plan: RunPlan
    jobs_at_once: int = 1
    job: int | None = None  # the job number within a multirun
    trained_in: reuse.Trained | None = None  # a finished run whose trained weights this run evaluates
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=lambda: {"load_s": 0.0, "train_s": 0.0, "eval_s": 0.0})
    partial: dict[str, Any] = field(default_factory=dict)  # record fields known so far

    def execute(self) -> dict[str, Any]:
        config = self.plan.config
        slots = resolve_path(str(config.get("cache_dir", ".cache"))) / "gpu-slots"
        with claimed_device(str(config.get("device", "auto")), self.job, int(config.get("jobs_per_gpu", 1)),
                            slots) as device:
            return self._execute_on(device)

    def _execute_on(self, device: torch.device) -> dict[str, Any]:
        # the caller holds this run's claim, so a temporary folder here was left by a killed attempt
        for stale in self.plan.directory.glob(".tmp-run-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.plan.directory.glob(f".tmp-{resume.RESUME_FILE}-*"):  # a save that was killed
            stale.unlink(missing_ok=True)
        staging = self.plan.directory / f".tmp-run-{datetime.now().strftime('%Y%m%d%H%M%S%f')}"
        try:
            setup = self._set_up(device, staging)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)  # e.g. the checkpoint linked for evaluation
            if isinstance(error, NotApplicableError):  # a legitimate table cell: "n/a" with the reason
                return self._write_not_applicable(error)
            if not isinstance(error, PeftReproError):  # an input error found while loading: nothing written
                self._write_failed(error)
            raise
        tracker, exit_code = Tracker(), 1
        try:
            tracker = make_tracker(self.plan)
            record = self._train_and_evaluate(setup, staging, tracker)
            exit_code = 0
            return record
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            self._write_failed(error)
            raise
        finally:
            tracker.finish(exit_code)  # always: runs of a sweep must not merge (wandb #1314)

    # -- phases

    def _set_up(self, device: torch.device, staging: Path) -> _Setup:
        from peftrepro.methods import apply_method, count_parameters, load_adapter, weight_report
        from peftrepro.models import context_length, describe, load_model

        plan, config = self.plan, self.plan.config
        began = time.perf_counter()
        seed_everything(int(config["seed"]), plan.settings.deterministic)
        threads, why = cpu_threads(config, self.jobs_at_once)
        torch.set_num_threads(threads)
        self.partial["threads"] = {"torch": threads, "why": why}
        task = plan.task
        train_rows = task.load_split(task.options.train_split, task.options.max_train_examples)
        eval_rows = task.load_split(task.options.eval_split, task.options.max_eval_examples)
        if not train_rows:
            raise ConfigError(f"task {task.name}: split {task.options.train_split!r} has no examples; zero steps")
        model, tokenizer = load_model(config["model"])
        self.partial["model"] = describe(model, config["model"], tokenizer)
        _fail_if(config, "setup")
        if self.trained_in:
            # linked first, then loaded from the link: the weights evaluated are the weights kept, whatever
            # a rerun of the trainer does to its own files meanwhile (why_not_evaluate checks its record)
            try:
                reuse.link_checkpoint(self.trained_in, staging / "adapter")
                applied, failure = load_adapter(model, staging / "adapter"), None
            except Exception as error:  # a corrupt file, options this code no longer accepts: train instead
                failure = f"its checkpoint does not load here ({type(error).__name__}: {error})"
            if failure:
                del model
                return self._train_instead(device, failure, began, staging)
        else:
            applied = apply_method(model, plan.method_config)
        if applied.provenance:  # weights loaded rather than trained (peft_adapter): which ones
            self.partial["method_source"] = applied.provenance
        initial_A = _initial_factors(config, applied)
        settings = replace(plan.settings, max_length=_sequence_length(plan, applied.prompt.n_virtual,
                                                                     context_length(model)))
        trainable, total = count_parameters(model)
        self.partial["params"] = {"trainable": int(trainable), "total": int(total)}
        model.to(device)
        self.partial["weights"] = weight_report(model)
        encoded = [task.encode(row, tokenizer, applied.prompt, plan.settings.max_length) for row in train_rows]
        self.partial["data"] = {"train_examples": len(encoded), "eval_examples": len(eval_rows),
                                "train_split": task.options.train_split, "eval_split": task.options.eval_split,
                                "source": plan.data_source,
                                "train_tokens_per_epoch": sum(len(e.input_ids) for e in encoded)}
        if self.trained_in and (why := reuse.why_not_evaluate(self.trained_in, self.partial["model"],
                                                              self.partial["data"], envinfo.device_name(device),
                                                              applied)):
            del model, applied, encoded  # the loaded weights go before a fresh base model comes
            return self._train_instead(device, why, began, staging)
        self.timings["load_s"] += time.perf_counter() - began
        return _Setup(model, tokenizer, applied, encoded, eval_rows, device, settings, initial_A)

    def _train_instead(self, device: torch.device, why: str, began: float, staging: Path) -> _Setup:
        """Set up again from the start, to train here: another run's weights cannot stand for this one's."""
        self.timings["load_s"] += time.perf_counter() - began  # the set-up that was given up took time too
        log.warning("run %s trains itself: the weights of %s cannot stand for its training (%s)",
                    self.plan.key, self.trained_in.folder if self.trained_in else None, why)
        self.trained_in = None
        shutil.rmtree(staging / "adapter", ignore_errors=True)
        return self._set_up(device, staging)

    def _train_and_evaluate(self, setup: _Setup, staging: Path, tracker: Tracker) -> dict[str, Any]:
        from peftrepro.methods import save_adapter, weight_report
        from peftrepro.methods.checkpoint import WEIGHTS_FILE

        plan, config, settings = self.plan, self.plan.config, setup.settings
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setup.device)
        per_epoch: list[dict[str, Any]] = []
        best: dict[str, Any] = {}
        primary = plan.task.primary_metric

        def evaluate(epoch: int, step: int) -> None:
            output = self._evaluate(setup)
            row = {"epoch": epoch, **output.metrics}
            per_epoch.append(row)
            tracker.log({f"eval/{k}": v for k, v in output.metrics.items() if isinstance(v, (int, float))}, step)
            if not setup.applied.is_final():  # mid-schedule (e.g. short of the pruning target): not a result
                log.info("epoch %d is not reported: the method's schedule has not reached its end", epoch)
                return
            if not best or _score(row, primary) > _score(best["row"], primary):
                best.update(row=row, output=output, bytes=0, facts=setup.applied.facts())
                self.partial["weights"] = weight_report(setup.model)  # as the reported model left them
                if self.trained_in:  # its checkpoint, linked at set-up, is what was evaluated
                    best["bytes"] = (staging / "adapter" / WEIGHTS_FILE).stat().st_size
                elif plan.method_config.trains:  # the zero-shot baseline has no weights of its own
                    shutil.rmtree(staging / "adapter", ignore_errors=True)
                    best["bytes"] = save_adapter(setup.model, plan.method_config, staging / "adapter")

        _fail_if(config, "train")
        if self.trained_in:  # trained by another run of the same training: its weights are loaded
            self.partial["trained_in"] = reuse.provenance(self.trained_in)
            stats = _training_of(self.trained_in.record)
            evaluate(stats.epochs, stats.steps)
            return self._finish(staging, stats, per_epoch, best, setup)
        if not plan.method_config.trains:  # method `none`: the zero-shot baseline, evaluated as loaded
            evaluate(0, 0)
            return self._finish(staging, TrainStats(), per_epoch, best, setup)
        num_steps, num_warmup_steps = total_steps(len(setup.encoded), settings), warmup_steps(setup.encoded, settings)
        state = make_train_state(setup.model, settings, num_steps, num_warmup_steps, setup.device)
        fingerprint = resume.Fingerprint.of(plan.key, envinfo.device_name(setup.device),
                                            resume.data_digest(setup.encoded, num_steps, num_warmup_steps))
        restored = resume.restore(plan.directory, fingerprint, state, setup.applied)
        if restored:
            self._restore_evaluations(restored.evaluations, per_epoch, best, staging)
        self.partial["resumptions"] = restored.resumptions if restored else []

        def save_position(position: LoopPosition) -> None:
            resume.save(plan.directory, fingerprint, state, setup.applied, position,
                        self._evaluations(per_epoch, best, staging), self.partial["resumptions"])
            _fail_if(config, "saved", position.stats.steps)

        every = config.get("resume_every_s")
        # the training phase's peak alone (CPU: its resident set; the process's lifetime peak is kept apart)
        self.partial["process_peak_bytes"] = _process_peak_bytes()
        with PeakMemory(setup.device) as peak:
            stats = fit(state, setup.encoded, setup.tokenizer.pad_token_id, int(config["seed"]), on_log=tracker.log,
                        on_epoch_end=(lambda epoch: evaluate(epoch, state.step)) if settings.eval_every_epoch else None,
                        after_step=setup.applied.after_step, start=restored.position if restored else None,
                        save_position=save_position if resume.can_resume(setup.applied) else None,
                        save_every_s=None if every is None else float(every))
        self.partial["train_memory"] = {"train_peak_bytes": peak.peak_bytes, "train_kind": peak.kind}
        self.timings["train_s"] = stats.seconds
        if not settings.eval_every_epoch:
            evaluate(stats.epochs, state.step)
        return self._finish(staging, stats, per_epoch, best, setup)

    def _evaluations(self, per_epoch: list[dict[str, Any]], best: dict[str, Any], staging: Path) -> resume.Evaluations:
        """The evaluations so far, as a saved training state keeps them (the best epoch's adapter files too)."""
        if not best:
            return resume.Evaluations(list(per_epoch))
        output = best["output"]
        kept = {"row": best["row"], "bytes": best["bytes"], "facts": best["facts"], "weights": self.partial["weights"],
                "output": {"metrics": output.metrics, "predictions": output.predictions, "notes": output.notes,
                           "scored": output.scored}}
        adapter = staging / "adapter"
        files = {path.name: path.read_bytes() for path in adapter.iterdir()} if adapter.is_dir() else {}
        return resume.Evaluations(list(per_epoch), kept, files)

    def _restore_evaluations(self, saved: resume.Evaluations, per_epoch: list[dict[str, Any]], best: dict[str, Any],
                             staging: Path) -> None:
        per_epoch[:] = saved.per_epoch
        if not saved.best:
            return
        best.update(saved.best, output=EvalOutput(**saved.best["output"]))
        self.partial["weights"] = best.pop("weights")
        for name, data in saved.adapter_files.items():
            records.atomic_write_bytes(staging / "adapter" / name, data)

    def _evaluate(self, setup: _Setup) -> EvalOutput:
        plan = self.plan
        began = time.perf_counter()
        _fail_if(plan.config, "eval")
        deferred = {"score": False} if plan.defers_scoring else {}
        with _merged(setup.applied, plan.config.get("merge_for_eval", True)), \
                autocast_for(setup.device, plan.settings.precision):
            output = plan.task.evaluate(setup.model, setup.tokenizer, setup.eval_rows, setup.applied.prompt,
                                        plan.decoding, **deferred)
        self.timings["eval_s"] += time.perf_counter() - began
        log.info("eval: %s", {k: v for k, v in output.metrics.items()})
        return output

    def _finish(self, staging: Path, stats: TrainStats, per_epoch: list[dict[str, Any]], best: dict[str, Any],
                setup: _Setup) -> dict[str, Any]:
        plan = self.plan
        directory = plan.directory
        (directory / records.RECORD_FILE).unlink(missing_ok=True)  # an old record never vouches for new files
        records.write_predictions(staging, best["output"].predictions)
        from peftrepro.methods.checkpoint import CONFIG_FILE, WEIGHTS_FILE
        from peftrepro.methods.factors import FACTORS_FILE

        keep_weights = bool(plan.config.get("keep_weights", True))
        for name in (WEIGHTS_FILE, CONFIG_FILE, FACTORS_FILE):  # an earlier run's weights never pass for this run's
            (directory / name).unlink(missing_ok=True)
        if (staging / "adapter").is_dir() and setup.initial_A is not None:  # kept with keep_weights=false too
            _export_factors(plan.config["lora_factors"], staging, setup)
        if (staging / "adapter").is_dir():
            if keep_weights:
                records.move_into(staging / "adapter", directory)
            else:
                shutil.rmtree(staging / "adapter")
        records.move_into(staging, directory)
        record = self._record("ok" if best["output"].scored else records.UNSCORED, None, setup.device)
        record.update(best.get("facts") or {})  # e.g. pruning: target and measured remaining weights
        record.update(
            metrics=best["row"] and {k: v for k, v in best["row"].items() if k != "epoch"},
            metrics_per_epoch=per_epoch,
            best_epoch=best["row"]["epoch"] if plan.settings.eval_every_epoch else None,
            checkpoint_bytes=int(best["bytes"]),
            weights_kept=keep_weights and bool(best["bytes"]),
            eval_notes=best["output"].notes,
            training={"steps": stats.steps, "epochs": stats.epochs, "tokens": stats.tokens,
                      "padded_tokens": stats.padded_tokens, "final_loss": stats.last_loss,
                      "loss_curve": [list(point) for point in stats.losses],
                      "resumed": self.partial.get("resumptions", [])},
            # a run that evaluated another's weights trained nothing: its trainer's throughput is under trained_in
            throughput={"train_tokens_per_s": None} if self.trained_in else _throughput(stats),
        )
        records.write_record(directory, record)
        resume.discard(directory)  # the record stands for the training now
        log.info("%s %s: %s", record["status"], plan.key, record["metrics"])
        return records.read_record(directory) or record  # as written: plain JSON types

    # -- records

    def _record(self, status: str, error: dict[str, str] | None, device: torch.device | None) -> dict[str, Any]:
        plan, config = self.plan, self.plan.config
        self.timings["total_s"] = time.perf_counter() - self.started
        return {
            "schema_version": records.SCHEMA_VERSION, "run_key": plan.key, "experiment": config["experiment"],
            "status": status, "error": error, "seed": config["seed"],
            "config": plan.recorded_config,
            "profile": config.get("profile_name"), "model": self.partial.get("model"),
            "task": plan.task.name, "method": {"name": plan.method_config.name, **plan.method_config.options(),
                                               **({"loaded": self.partial["method_source"]}
                                                  if "method_source" in self.partial else {})},
            "metrics": {}, "metrics_per_epoch": [], "best_epoch": None,
            "params": self.partial.get("params"), "checkpoint_bytes": None, "data": self.partial.get("data"),
            "timings": dict(self.timings), "throughput": {"train_tokens_per_s": None},
            "memory": {**_peak_memory(device, self._process_peak_at_least()), **self.partial.get("train_memory", {})},
            "weights": self.partial.get("weights"), "threads": self.partial.get("threads"),
            **({"trained_in": self.partial["trained_in"]} if "trained_in" in self.partial else {}),
            "env": envinfo.environment(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _process_peak_at_least(self) -> int:
        """What the process's peak cannot be below: its peak before training (the training phase's
        measurement resets the high-water mark) and the training phase's own peak."""
        train = (self.partial.get("train_memory") or {}).get("train_peak_bytes") or 0
        return max(self.partial.get("process_peak_bytes", 0), train)

    def _write_not_applicable(self, error: NotApplicableError) -> dict[str, Any]:
        record = self._record(records.NOT_APPLICABLE, {"type": type(error).__name__, "message": str(error),
                                                       "traceback": ""}, None)
        records.write_record(self.plan.directory, record)
        log.warning("run %s is not applicable: %s", self.plan.key, error)
        return record

    def _write_failed(self, error: BaseException) -> None:
        if records.is_finished(self.plan.directory):  # a forced rerun that broke: the finished record stays
            log.error("run %s (force=true) stopped (%s: %s); its earlier finished record is kept", self.plan.key,
                      type(error).__name__, error)
            return
        interrupted = isinstance(error, KeyboardInterrupt)
        details = {"type": type(error).__name__,
                   "message": "interrupted (Ctrl-C or SIGTERM)" if interrupted else str(error),
                   "traceback": "" if interrupted else "".join(traceback.format_exception(error))}
        status = records.INTERRUPTED if interrupted else "failed"
        try:
            records.write_record(self.plan.directory, self._record(status, details, None))
            log.error("run %s %s (%s); record at %s", self.plan.key, status, details["message"] or type(error).__name__,
                      self.plan.directory / records.RECORD_FILE)
        except Exception:  # never hide the original error behind a failure to record it
            log.exception("could not write the %s record of %s", status, self.plan.key)


@dataclass
class _Setup:
    model: torch.nn.Module
    tokenizer: Any
    applied: Any
    encoded: list
    eval_rows: list
    device: torch.device
    settings: TrainSettings  # the plan's, with the longest sequence this method makes
    initial_A: dict[str, torch.Tensor] | None = None  # LoRA's A as initialised, where lora_factors asks


def _throughput(stats: TrainStats) -> dict[str, float]:
    return {"train_tokens_per_s": stats.tokens_per_s,
            "train_padded_tokens_per_s": stats.padded_tokens / stats.seconds if stats.seconds else 0.0}


def _training_of(record: Mapping[str, Any]) -> TrainStats:
    """The training statistics a finished run recorded (steps, tokens, loss curve); no time of this run."""
    training = record.get("training") or {}
    return TrainStats(steps=int(training.get("steps", 0)), epochs=int(training.get("epochs", 0)),
                      tokens=int(training.get("tokens", 0)), padded_tokens=int(training.get("padded_tokens", 0)),
                      last_loss=training.get("final_loss"),
                      losses=[tuple(point) for point in training.get("loss_curve", [])])


def _initial_factors(config: Mapping[str, Any], applied: Any) -> dict[str, torch.Tensor] | None:
    """Where the run keeps LoRA factors (`lora_factors`, methods.factors.keeps_factors): A of the chosen
    layers as initialised, to record how far training moved it. Checks the layers against the model
    (an input error, found before training). None where the run keeps none."""
    from peftrepro.methods.factors import initial_A, keeps_factors, resolve_layers
    from peftrepro.methods.targets import blocks

    option = config.get("lora_factors")
    if applied.config.name != "lora" or not keeps_factors(option, applied.config.rank_per_weight()):
        return None
    layers = resolve_layers(option["layers"], len(blocks(applied.model)))
    return initial_A(applied.model, layers, option["weights"])


def _export_factors(option: Mapping[str, Any], staging: Path, setup: _Setup) -> None:
    """lora_factors.safetensors from the best epoch's adapter (the evaluated model), beside it."""
    from peftrepro.methods.factors import FACTORS_FILE, export_factors
    from peftrepro.methods.targets import layout

    export_factors(staging / "adapter", staging / FACTORS_FILE, option["layers"], option["weights"],
                   layout(setup.model).blocks, setup.initial_A)


def _sequence_length(plan: RunPlan, n_virtual: int, context: int | None) -> int:
    """The longest training sequence: the example's own tokens (train.max_length) plus the method's
    virtual tokens, which must fit the model's context (prefix tuning spends context, paper §3)."""
    length = plan.settings.max_length + n_virtual
    if context is not None and length > context:
        raise ConfigError(
            f"train.max_length={plan.settings.max_length} example tokens + {n_virtual} virtual tokens of "
            f"method {plan.method_config.name!r} = {length} exceed the model's context of {context} "
            f"positions; lower task.max_length or method.prefix_length / method.infix_length")
    return length


def _score(row: Mapping[str, Any], metric: str) -> float:
    value = row.get(metric)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf


@contextmanager
def _merged(applied: Any, enabled: bool) -> Iterator[None]:
    """LoRA folded into W for evaluation (no extra latency, paper §4.2), unfolded afterwards."""
    if not (enabled and getattr(applied, "mergeable", None)):
        yield
        return
    applied.merge()
    try:
        yield
    finally:
        applied.unmerge()


def _fail_if(config: Mapping[str, Any], phase: str, step: int | None = None) -> None:
    debug = config.get("debug", {})
    fail_at = debug.get("fail_at")
    if (fail_at == "interrupt" and phase == "train") or (phase == "saved" and step == debug.get("interrupt_after_save")):
        raise KeyboardInterrupt
    if fail_at == phase:
        raise InjectedFailure(f"injected failure in phase {phase!r} (debug.fail_at={phase})")


def _peak_memory(device: torch.device | None, at_least: int = 0) -> dict[str, Any]:
    """The run's peak memory; on CPU the process's, and never below `at_least` (what was measured
    before the training phase reset the high-water mark, and in that phase)."""
    if device is not None and device.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "device": envinfo.device_name(device),
                "kind": "torch.cuda.max_memory_allocated"}
    return {"peak_bytes": max(_process_peak_bytes(), at_least),
            "device": envinfo.device_name(torch.device("cpu")), "kind": "process max RSS"}


def _process_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
