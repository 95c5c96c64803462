"""Shared LoRA test helpers: random PEFT adapters for a tiny checkpoint, the merged
transformers reference (peft merge_and_unload) and the converter of
tools/convert_peft_lora.py. Import with `from lora_fixtures import ...`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_peft_lora.py"


def load_converter():
    """tools/convert_peft_lora.py as a module."""
    spec = importlib.util.spec_from_file_location("convert_peft_lora", _TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_peft_adapter(base_dir: str | Path, out_dir: str | Path, *, seed: int, r: int = 4,
                      alpha: float = 8.0, target_modules: tuple[str, ...] = ALL_MODULES,
                      std: float = 0.1, **lora_kwargs) -> Path:
    """A PEFT LoRA adapter on the checkpoint at base_dir with random, non-zero A and B
    (std), saved with save_pretrained into out_dir; returns out_dir."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, init_lora_weights=False, **lora_kwargs)
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def merged_model(base_dir: str | Path, adapter_dir: str | Path):
    """transformers model of base_dir with the adapter merged into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model


def lora_tensors(adapter_dir: str | Path,
                 storage_type: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(lora_weights [rows, width], lora_config [rows, 3]) of a PEFT adapter folder."""
    return load_converter().convert_peft_adapter(adapter_dir, storage_type)
