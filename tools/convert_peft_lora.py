#!/usr/bin/env python3
"""Convert a PEFT LoRA adapter folder to TensorRT-LLM's lora_weights / lora_config tensors.

    python3 tools/convert_peft_lora.py -i ADAPTER_DIR -o OUT_DIR [--storage-type float16]

ADAPTER_DIR holds adapter_config.json and adapter_model.safetensors (or
adapter_model.bin). OUT_DIR receives model.lora_weights.npy [1, rows, width] and
model.lora_config.npy [1, rows, 3] (int32), as TensorRT-LLM's hf_lora_convert.py writes
them: send them as the lora_weights / lora_config inputs of the tensorrt_llm model
(with a lora_task_id), or put OUT_DIR at <lora_prefetch_dir>/<task_id>/.

One row per (layer, module): lora_config (module id, layer, adapter size r) and
lora_weights = the "in" weights A [r, hidden_in] then the "out" weights B [hidden_out, r],
row-major, concatenated and zero-padded to the widest row. The adapter's scaling
(lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; alpha_pattern and
rank_pattern honoured) is folded into B, as TensorRT-LLM expects.

PEFT (Llama-family) module -> TensorRT-LLM LoraModule id:
    q_proj -> 1 attn_q        k_proj -> 2 attn_k        v_proj -> 3 attn_v
    o_proj -> 4 attn_dense    qkv_proj -> 0 attn_qkv (fused q/k/v)
    gate_proj -> 5 mlp_h_to_4h    down_proj -> 6 mlp_4h_to_h    up_proj -> 7 mlp_gate
(TensorRT-LLM's Llama MLP applies the activation to its "fc" = mlp_h_to_4h, which is
Hugging Face's gate_proj; its "gate" = mlp_gate multiplies in and is up_proj.)
DoRA, fan_in_fan_out, LoRA biases, embedding adapters and modules_to_save have no
TensorRT-LLM LoRA form and are refused.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

PEFT_TO_MODULE_ID = {
    "qkv_proj": 0,
    "q_proj": 1,
    "k_proj": 2,
    "v_proj": 3,
    "o_proj": 4,
    "gate_proj": 5,
    "down_proj": 6,
    "up_proj": 7,
}
STORAGE_TYPES = {"float16": np.float16, "float32": np.float32}
WEIGHTS_FILE, CONFIG_FILE = "model.lora_weights.npy", "model.lora_config.npy"

_KEY = re.compile(r"^(?P<module>.*\.layers\.(?P<layer>\d+)\.[\w.]*?(?P<name>\w+))"
                  r"\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")


class ConversionError(ValueError):
    """The adapter cannot be expressed as TensorRT-LLM LoRA tensors."""


def _load_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    safetensors = adapter_dir / "adapter_model.safetensors"
    if safetensors.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors))
    binary = adapter_dir / "adapter_model.bin"
    if binary.is_file():
        return torch.load(str(binary), map_location="cpu", weights_only=True)
    raise ConversionError(f"{adapter_dir}: no adapter_model.safetensors or adapter_model.bin")


def _pattern_value(patterns: dict, module_path: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module path suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


def _check_config(config: dict, adapter_dir: Path) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ConversionError(f"{adapter_dir}: peft_type {peft_type} is not LoRA")
    refused = {
        "use_dora": "DoRA adapters",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D) adapters",
        "lora_bias": "LoRA biases",
    }
    for key, what in refused.items():
        if config.get(key):
            raise ConversionError(f"{adapter_dir}: {what} have no TensorRT-LLM LoRA form")
    if config.get("bias", "none") not in ("none", None):
        raise ConversionError(f"{adapter_dir}: bias='{config['bias']}' (trained biases) has no "
                              "TensorRT-LLM LoRA form")
    if config.get("modules_to_save"):
        raise ConversionError(f"{adapter_dir}: modules_to_save {config['modules_to_save']} "
                              "(fully trained modules) have no TensorRT-LLM LoRA form")


def convert_peft_adapter(adapter_dir: str | Path,
                         storage_type: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """The adapter as (lora_weights [rows, width] of storage_type, lora_config [rows, 3]
    int32), rows ordered by layer then module id. Raises ConversionError."""
    adapter_dir = Path(adapter_dir)
    if storage_type not in STORAGE_TYPES:
        raise ConversionError(f"storage type must be one of {sorted(STORAGE_TYPES)}")
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ConversionError(f"{adapter_dir}: no adapter_config.json")
    config = json.loads(config_path.read_text())
    _check_config(config, adapter_dir)
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rslora = bool(config.get("use_rslora", False))
    alpha_pattern = config.get("alpha_pattern") or {}

    pairs: dict[tuple[int, int], dict[str, object]] = {}
    for key, tensor in _load_tensors(adapter_dir).items():
        match = _KEY.match(key)
        if match is None:
            raise ConversionError(f"{adapter_dir}: tensor '{key}' is not a LoRA A/B weight of a "
                                  "decoder layer (embedding adapters are not supported)")
        name = match["name"]
        if name not in PEFT_TO_MODULE_ID:
            raise ConversionError(f"{adapter_dir}: module '{name}' ({key}) has no TensorRT-LLM "
                                  f"LoRA module; supported: {', '.join(PEFT_TO_MODULE_ID)}")
        entry = pairs.setdefault((int(match["layer"]), PEFT_TO_MODULE_ID[name]), {})
        path = match["module"].removeprefix("base_model.model.")
        entry["path"] = path
        entry[match["ab"]] = tensor.detach().to(torch.float32)
    if not pairs:
        raise ConversionError(f"{adapter_dir}: the adapter has no LoRA weights")

    rows: list[np.ndarray] = []
    configs: list[list[int]] = []
    for (layer, module_id), entry in sorted(pairs.items()):
        a, b = entry.get("A"), entry.get("B")
        if a is None or b is None:
            raise ConversionError(f"{adapter_dir}: {entry['path']} lacks its lora_"
                                  f"{'A' if a is None else 'B'} weight")
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        rank = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != rank:
            raise ConversionError(f"{adapter_dir}: {entry['path']}: lora_A {list(a.shape)} and "
                                  f"lora_B {list(b.shape)} do not form a rank-{rank} adapter")
        module_alpha = _pattern_value(alpha_pattern, str(entry["path"]), alpha)
        scaling = module_alpha / (math.sqrt(rank) if rslora else rank)
        row = torch.cat([a.reshape(-1), (b * scaling).reshape(-1)])
        rows.append(row.numpy())
        configs.append([module_id, layer, rank])
    width = max(r.size for r in rows)
    weights = np.zeros((len(rows), width), dtype=STORAGE_TYPES[storage_type])
    for i, row in enumerate(rows):
        weights[i, : row.size] = row
    return weights, np.asarray(configs, dtype=np.int32)


def save_lora_tensors(out_dir: str | Path, weights: np.ndarray, config: np.ndarray) -> Path:
    """Write model.lora_weights.npy / model.lora_config.npy with a leading batch dim of 1
    (TensorRT-LLM's files); returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / WEIGHTS_FILE, weights[None])
    np.save(out / CONFIG_FILE, config[None])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--in-file", required=True, type=Path,
                        help="PEFT adapter folder (adapter_config.json + weights)")
    parser.add_argument("-o", "--out-dir", required=True, type=Path,
                        help="folder for model.lora_weights.npy and model.lora_config.npy")
    parser.add_argument("--storage-type", default="float16", choices=sorted(STORAGE_TYPES),
                        help="dtype of lora_weights (the model's dtype; default float16)")
    args = parser.parse_args(argv)
    try:
        weights, config = convert_peft_adapter(args.in_file, args.storage_type)
    except (ConversionError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = save_lora_tensors(args.out_dir, weights, config)
    print(f"wrote {len(config)} LoRA rows (width {weights.shape[1]}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
