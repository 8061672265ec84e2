"""PEFT methods behind one interface (config dataclass + apply + registry): those the LoRA paper
compares, QLoRA (a LoRA option), prompt tuning, and magnitude / movement pruning.

    cfg = make_method_config("lora", {"weights": ["W_q", "W_v"], "r": 4})
    applied = apply_method(model, cfg)      # in place; everything else frozen
    applied.prompt                          # virtual tokens for the task (prefix methods)
    applied.merge(); applied.merge_and_unload()   # LoRA only (not on a 4-bit base)
    applied.after_step(step, total_steps, rate_scale)   # a method's own schedule (pruning), called by the training loop

Modules: targets (paper weight names -> modules per architecture), lora, quantize (QLoRA's 4-bit
base), adapters, prefix (PreEmbed, PreLayer, prompt tuning), selective (ft, ft_top, bitfit), pruning
(magnitude, movement), accounting (counts, the paper's formulas, stored bytes), checkpoint
(adapter save/load), interop (to and from Hugging Face peft, merged checkpoints; method
peft_adapter). The parameter table they feed is `peftrepro.report.params`.
"""

from peftrepro.methods.accounting import count_parameters, formula_params, weight_report
from peftrepro.methods.base import AppliedMethod, MethodConfig
from peftrepro.methods.checkpoint import load_adapter, save_adapter
from peftrepro.methods.registry import METHODS, apply_method, make_method_config

__all__ = [
    "METHODS", "AppliedMethod", "MethodConfig", "apply_method", "count_parameters", "formula_params",
    "load_adapter", "make_method_config", "save_adapter", "weight_report",
]
