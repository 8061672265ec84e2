"""peft-repro: replicate the LoRA paper's tables and compare the PEFT methods it studies."""

__version__ = "0.1.0"
