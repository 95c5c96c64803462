"""Reads checkpoint tensors from a Hugging Face folder: model.safetensors, sharded
safetensors with model.safetensors.index.json, or (fallback) pytorch_model*.bin."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from llmserve.core.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)

_SAFE_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


def checkpoint_files(model_path: str | Path) -> list[Path]:
    """The weight files of a checkpoint, in a stable order."""
    path = Path(model_path)
    index = path / _SAFE_INDEX
    if index.is_file():
        return _files_from_index(index)
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    if (path / _BIN_INDEX).is_file():
        return _files_from_index(path / _BIN_INDEX)
    found = sorted(path.glob("pytorch_model*.bin"))
    if found:
        return found
    raise NotFound(f"no *.safetensors (or pytorch_model*.bin) weights in '{path}'")


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise InvalidArgument(f"{index}: not a valid weight index: {exc}") from exc
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise NotFound(f"{index}: shard files missing: {', '.join(missing)}")
    return files


def iter_checkpoint_tensors(model_path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) for every tensor of the checkpoint, on CPU, as stored."""
    for file in checkpoint_files(model_path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


def load_state_dict(model_path: str | Path) -> dict[str, torch.Tensor]:
    """All checkpoint tensors keyed by name with any leading "model." removed, so keys
    read "layers.0.self_attn.q_proj.weight", "embed_tokens.weight", "lm_head.weight"."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint_tensors(model_path):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        key = name.removeprefix("model.")
        state[key] = tensor
    logger.debug("loaded %d tensors from %s", len(state), model_path)
    return state


def stored_dtype(model_path: str | Path) -> torch.dtype | None:
    """The floating dtype of the first floating tensor in the checkpoint (None if none)."""
    for file in checkpoint_files(model_path):
        if file.suffix != ".safetensors":
            return None
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                dtype_name = tensor.get_dtype()
                mapping = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
                if dtype_name in mapping:
                    return mapping[dtype_name]
    return None
