"""The one interface every method implements: a config dataclass, an apply function, a registry entry."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn

from peftrepro.errors import ConfigError
from peftrepro.interfaces import NO_PROMPT_WRAP, PromptWrap

HALF = (torch.bfloat16, torch.float16)


def trainable_dtype(base: torch.dtype) -> torch.dtype:
    """The dtype of the parameters a method adds to a base of dtype `base`: fp32 over a half-precision
    base, as peft keeps its adapters (`autocast_adapter_dtype`), since AdamW's small updates round
    away in bf16; the base's own dtype otherwise. Methods that train the base's own weights (FT,
    BitFit) train them as loaded."""
    return torch.float32 if base in HALF else base


@dataclass
class MethodConfig:
    """Base of every method's options; subclasses add fields and check them in `validate`."""

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True  # False: a run evaluates the model as the method leaves it, no training
    # True: training changes the model on a schedule (AppliedMethod.after_step) whose state a checkpoint
    # does not restore, so the saved weights cannot be evaluated as the run that trained them did
    scheduled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range option (called on construction)."""

    def check_run(self, run_config: Mapping[str, Any]) -> None:
        """Raise ConfigError where the method cannot run under this run's config or environment
        (e.g. a missing optional package); called when a run is planned, before anything is written."""

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def canonical(self) -> dict[str, Any]:
        """The options in one normal form: two configs that train the same thing give equal
        dicts however they were written (see `peftrepro.runs.reuse`)."""
        return {"name": self.name, **self.options()}


@dataclass
class AppliedMethod:
    """What `apply_method` returns: the (modified in place) model and what the task needs to know."""

    model: nn.Module
    config: MethodConfig
    prompt: PromptWrap = NO_PROMPT_WRAP
    # set by LoRA only: the wrappers that can fold their update into the base weight
    mergeable: list[Any] = field(default_factory=list)
    # called by the training loop after each optimizer step with (steps done, total steps, the share of
    # its peak learning rate that step used): a method that changes the model on a schedule (pruning's
    # sparsity ramp, movement's scores at a rate following the weights') does it here
    after_step: Callable[[int, int, float], None] | None = None
    # False while that schedule has not reached its end: an evaluation then sees an intermediate
    # model (e.g. a pruned model short of its sparsity), which a run never reports as its result
    is_final: Callable[[], bool] = lambda: True
    # what the run record says of the applied method beyond its options, measured on the model
    # (pruning: its target and measured remaining weights)
    facts: Callable[[], dict[str, Any]] = dict
    # a scheduled method's state beyond the model's tensors (pruning: the sparsity reached, its mask updates),
    # saved and restored with them when a killed run resumes its training (peftrepro.runs.resume)
    schedule_state: Callable[[], dict[str, Any]] | None = None
    restore_schedule: Callable[[Mapping[str, Any]], None] | None = None
    # buffers (by their last name) that are zero at the end of every optimizer step, so a saved training
    # state leaves them out (movement's score gradient, summed over a step's micro-batches: 4 bytes a weight)
    step_buffers: frozenset[str] = frozenset()
    # where the method's weights came from, when it loads them rather than trains them (peft_adapter)
    provenance: dict[str, Any] | None = None

    def _require_mergeable(self, action: str) -> None:
        if not self.mergeable:
            raise ConfigError(
                f"{action}() is defined only for LoRA (its update folds into W0); "
                f"method {self.config.name!r} adds computation that cannot be merged away"
            )

    def merge(self) -> None:
        """Fold the LoRA update into the frozen weights (W = W0 + s·BA); idempotent."""
        self._require_mergeable("merge")
        for wrapper in self.mergeable:
            wrapper.merge()

    def unmerge(self) -> None:
        """Undo `merge` (W = W - s·BA); idempotent."""
        self._require_mergeable("unmerge")
        for wrapper in self.mergeable:
            wrapper.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Merge, then put the plain base modules back: a model with no LoRA modules at all."""
        self._require_mergeable("merge_and_unload")
        for wrapper in self.mergeable:
            wrapper.merge()
        for root, path, wrapper in self._wrapper_paths():
            root.set_submodule(path, wrapper.base)
        self.mergeable = []
        return self.model

    def _wrapper_paths(self) -> Iterable[tuple[nn.Module, str, Any]]:
        wanted = {id(w) for w in self.mergeable}
        return [(self.model, name, module) for name, module in self.model.named_modules()
                if id(module) in wanted]


@dataclass(frozen=True)
class MethodSpec:
    """A registry entry: name, option dataclass and the function that applies it."""

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, Any], AppliedMethod]
    summary: str


def freeze_all(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def require_positive(config: MethodConfig, option: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"method {config.name!r}: option {option} must be an integer >= 1, got {value!r}")
