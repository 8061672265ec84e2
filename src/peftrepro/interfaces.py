"""The contracts between the layers of the suite: methods, tasks, the training loop and records.

Data flows one way (docs in README "Architecture"): a composed config names a model, a method,
a task and a profile; `runs.execute.run_one` loads the model, applies the method, trains on the task's encoded
examples, lets the task decode and score, and writes one record. These small types are what
crosses the seams, so each layer can be read and tested without the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

IGNORE_INDEX = -100  # label value the loss ignores (PyTorch / transformers convention)


@dataclass(frozen=True)
class PromptWrap:
    """Virtual-token ids a method asks the task to place around each prompt.

    Prefix-embedding and prefix-layer tuning (paper §5.1) train l_p "prefix" positions before the
    prompt and l_i "infix" positions after it. The method owns the ids (they lie outside the
    tokenizer's vocabulary and only the method's embedding wrapper understands them); the task only
    places them: `prefix_ids + prompt_ids + infix_ids + target_ids`. Methods without virtual
    tokens use the empty wrap.
    """

    prefix_ids: tuple[int, ...] = ()
    infix_ids: tuple[int, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.prefix_ids and not self.infix_ids

    @property
    def n_virtual(self) -> int:
        """Positions the wrap adds to every sequence, on top of the example's own tokens."""
        return len(self.prefix_ids) + len(self.infix_ids)


NO_PROMPT_WRAP = PromptWrap()


@dataclass
class EncodedExample:
    """One training sequence: token ids and labels (IGNORE_INDEX outside the target tokens)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class DecodingConfig:
    """How a generative task decodes (transformers' `generate`)."""

    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 64
    batch_size: int = 16


@dataclass
class EvalOutput:
    """What a task's evaluation returns: scalar metrics and one prediction row per example."""

    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    # counts worth reporting beside the metrics (unparseable outputs, excluded rows, ...)
    notes: dict[str, Any] = field(default_factory=dict)
    # False: predictions only, metrics left to `DeferredScoring.score` (config `scoring: later | auto`)
    scored: bool = True


class Task(Protocol):
    """A dataset plus its prompt format and its official metric."""

    name: str
    primary_metric: str  # the metric the tables report first and "best epoch" maximises

    def load_split(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Raw examples of one split, read from the data root (or the hub fallback)."""

    def encode(self, example: dict[str, Any], tokenizer: Any, prompt: PromptWrap,
               max_length: int) -> EncodedExample:
        """Prompt and target as token ids; the loss falls on the target tokens only."""

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]],
                 prompt: PromptWrap, decoding: DecodingConfig) -> EvalOutput:
        """Decode or score `examples` with `model` and compute the task's metrics."""


class DeferredScoring(Protocol):
    """A task whose scorer needs a tool outside Python (E2E: Java, for METEOR and the PTB tokenizer),
    so a machine without it (a GPU node, say) can decode now and another score the predictions later."""

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[dict[str, Any]],
                 prompt: PromptWrap, decoding: DecodingConfig, score: bool = True) -> EvalOutput:
        """As `Task.evaluate`; with score=False the prediction rows only (`scored=False`)."""

    def score(self, predictions: Sequence[dict[str, Any]]
              ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
        """Metrics, notes and the rows with their scoring detail added, from the prediction rows
        `evaluate` wrote (self-contained: each row carries what scoring needs, e.g. an E2E row its
        references)."""

    def missing_scoring_tools(self) -> list[str]:
        """The tools `score` needs that this machine lacks (empty: it scores as the paper did)."""
