"""pb_utils.ModelConfig: the object a Python model's static auto_complete_config(cfg)
receives and returns, as python_backend's triton_python_backend_utils defines it. It
wraps the config as Triton's JSON dict; conflicting re-definitions raise ValueError.
"""

from __future__ import annotations

import json
from typing import Any

_DATA_TYPES = {
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
    "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
    "TYPE_STRING", "TYPE_BF16",
}


class ModelConfig:
    """Model configuration for auto-complete. Only max_batch_size, input, output,
    dynamic_batching and model_transaction_policy can be changed."""

    def __init__(self, model_config: str | dict[str, Any]):
        if isinstance(model_config, (str, bytes)):
            model_config = json.loads(model_config)
        self._model_config: dict[str, Any] = model_config
        self._model_config.setdefault("name", "")
        self._model_config.setdefault("max_batch_size", 0)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])

    def as_dict(self) -> dict[str, Any]:
        """The configuration as a dict (Triton's JSON form). Read it, do not modify it."""
        return self._model_config

    @property
    def _name(self) -> str:
        return self._model_config.get("name", "")

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise ValueError(f"max_batch_size in auto-complete-config function for model "
                             f"'{self._name}' must be an int, got {type(max_batch_size)}")
        if max_batch_size < 0:
            raise ValueError(f"max_batch_size in auto-complete-config function for model "
                             f"'{self._name}' must be non-negative, got {max_batch_size}")
        current = int(self._model_config.get("max_batch_size", 0) or 0)
        if current != 0 and current != max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in "
                f"auto-complete-config function for model '{self._name}' specified "
                f"max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        """Make dynamic_batching the scheduler unless another scheduler is configured."""
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{scheduler}', but "
                    f"auto-complete-config function for model '{self._name}' tries to set "
                    "scheduling_choice as 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add_tensor("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add_tensor("output", output, ("name", "data_type", "dims"))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        if not isinstance(transaction_policy_dict, dict):
            raise ValueError(f"model transaction policy for model '{self._name}' must be a "
                             f"dict but {type(transaction_policy_dict)} was given")
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    f"model transaction property in auto-complete-config function for model "
                    f"'{self._name}' contains property other than 'decoupled'"
                )
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model "
                    f"'{self._name}', which is already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = wanted

    def _add_tensor(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        model = self._name
        if not isinstance(tensor, dict):
            raise ValueError(f"{kind} for model function must be a dict but "
                             f"{type(tensor)} was given")
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model '{model}' "
                             "must contain property name")
        name = tensor["name"]
        for required in ("data_type", "dims"):
            if required not in tensor:
                raise ValueError(f"{kind} '{name}' in auto-complete-config function for model "
                                 f"'{model}' is missing '{required}' property.")
        for key in tensor:
            if key not in allowed:
                raise ValueError(
                    f"{kind} '{name}' in auto-complete-config function for model '{model}' "
                    f"contains property other than {', '.join(repr(a) for a in allowed)}."
                )
        data_type = tensor["data_type"]
        if data_type not in _DATA_TYPES:
            raise ValueError(f"{kind} '{name}' in auto-complete-config function for model "
                             f"'{model}' has invalid data_type '{data_type}'")
        try:
            dims = [int(d) for d in tensor["dims"]]
        except (TypeError, ValueError):
            raise ValueError(f"{kind} '{name}' in auto-complete-config function for model "
                             f"'{model}' has invalid dims {tensor['dims']!r}") from None
        entry = {"name": name, "data_type": data_type, "dims": dims}
        if "optional" in tensor:
            entry["optional"] = bool(tensor["optional"])
        tensors = self._model_config.setdefault(kind, [])
        for current in tensors:
            if current.get("name") != name:
                continue
            current_type = current.get("data_type", "TYPE_INVALID")
            if current_type not in ("", "TYPE_INVALID") and current_type != data_type:
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype "
                    f"{current_type} for {kind} '{name}', model provides {data_type}"
                )
            current_dims = [int(d) for d in current.get("dims", [])]
            if current_dims and current_dims != dims:
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects dims {dims} but "
                    f"the model configuration specifies dims {current_dims}"
                )
            # The config's "optional" prints as false when unset, so the model can only
            # turn it on.
            if "optional" in entry:
                entry["optional"] = bool(current.get("optional", False)) or entry["optional"]
            current.update(entry)
            return
        tensors.append(entry)
