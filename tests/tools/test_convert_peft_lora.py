"""tools/convert_peft_lora.py: PEFT adapter folders -> TensorRT-LLM lora tensors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from llm_fixtures import make_tiny_checkpoint
from lora_fixtures import load_converter, make_peft_adapter
from safetensors.torch import load_file, save_file

conv = load_converter()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("conv_ckpt"), "llama",
                                with_tokenizer=False)


def _peft_weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_rows_follow_trtllm_layout_with_scaling_folded(ckpt, tmp_path):
    folder = make_peft_adapter(ckpt, tmp_path / "ad", seed=3, r=4, alpha=16)
    weights, config = conv.convert_peft_adapter(folder, "float32")
    assert config.dtype == np.int32 and config.shape == (14, 3)  # 7 modules x 2 layers
    assert [tuple(r) for r in config[:7]] == [(m, 0, 4) for m in range(1, 8)]
    names = {1: "self_attn.q_proj", 2: "self_attn.k_proj", 3: "self_attn.v_proj",
             4: "self_attn.o_proj", 5: "mlp.gate_proj", 6: "mlp.down_proj", 7: "mlp.up_proj"}
    raw = _peft_weights(folder)
    assert weights.shape[1] == max(4 * (a.shape[1] + b.shape[0]) for a, b in (
        (raw[k], raw[k.replace("lora_A", "lora_B")]) for k in raw if "lora_A" in k))
    for row, (module, layer, _rank) in zip(weights, config, strict=True):
        key = f"base_model.model.model.layers.{layer}.{names[module]}"
        a, b = raw[f"{key}.lora_A.weight"], raw[f"{key}.lora_B.weight"]
        n_a, n_b = a.numel(), b.numel()
        np.testing.assert_allclose(row[:n_a], a.reshape(-1).numpy(), rtol=1e-6)
        np.testing.assert_allclose(row[n_a : n_a + n_b], (b * 16 / 4).reshape(-1).numpy(),
                                   rtol=1e-6)
        assert not row[n_a + n_b :].any()  # zero padding to the widest row


def test_rslora_and_alpha_pattern_scaling(ckpt, tmp_path):
    folder = make_peft_adapter(ckpt, tmp_path / "ad", seed=4, r=4, alpha=8,
                               target_modules=("q_proj", "down_proj"), use_rslora=True,
                               alpha_pattern={"down_proj": 2})
    weights, config = conv.convert_peft_adapter(folder, "float32")
    raw = _peft_weights(folder)
    for row, (module, layer, _rank) in zip(weights, config, strict=True):
        name = "self_attn.q_proj" if module == 1 else "mlp.down_proj"
        scale = (8 if module == 1 else 2) / math.sqrt(4)
        key = f"base_model.model.model.layers.{layer}.{name}"
        a, b = raw[f"{key}.lora_A.weight"], raw[f"{key}.lora_B.weight"]
        np.testing.assert_allclose(row[a.numel() : a.numel() + b.numel()],
                                   (b * scale).reshape(-1).numpy(), rtol=1e-6)
    assert sorted({int(m) for m in config[:, 0]}) == [1, 6]


def _write_manual(folder, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def test_hand_written_peft_layout_and_cli(tmp_path):
    a, b = torch.randn(2, 8), torch.randn(6, 2)
    _write_manual(tmp_path / "ad", {"peft_type": "LORA", "r": 2, "lora_alpha": 4},
                  {"base_model.model.model.layers.3.mlp.up_proj.lora_A.weight": a,
                   "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight": b})
    out = tmp_path / "out"
    assert conv.main(["-i", str(tmp_path / "ad"), "-o", str(out)]) == 0
    weights = np.load(out / "model.lora_weights.npy")
    config = np.load(out / "model.lora_config.npy")
    assert weights.shape == (1, 1, 2 * 8 + 6 * 2) and weights.dtype == np.float16
    assert config.tolist() == [[[7, 3, 2]]]
    expected = torch.cat([a.reshape(-1), (b * 2).reshape(-1)]).half().numpy()
    np.testing.assert_array_equal(weights[0, 0], expected)


@pytest.mark.parametrize("config, message", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "lora_only"}, "bias"),
    ({"peft_type": "IA3"}, "not LoRA"),
])
def test_adapters_without_a_trtllm_form_are_refused(tmp_path, capsys, config, message):
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 4),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(4, 2)}
    _write_manual(tmp_path / "ad", {"peft_type": "LORA", "r": 2, "lora_alpha": 2, **config},
                  tensors)
    with pytest.raises(conv.ConversionError, match=message):
        conv.convert_peft_adapter(tmp_path / "ad")
    assert conv.main(["-i", str(tmp_path / "ad"), "-o", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err


def test_unknown_module_and_missing_half_are_refused(tmp_path):
    key = "base_model.model.model.layers.0.mlp.fc1"
    _write_manual(tmp_path / "a", {"r": 2, "lora_alpha": 2},
                  {f"{key}.lora_A.weight": torch.ones(2, 4),
                   f"{key}.lora_B.weight": torch.ones(4, 2)})
    with pytest.raises(conv.ConversionError, match="module 'fc1'"):
        conv.convert_peft_adapter(tmp_path / "a")
    key = "base_model.model.model.layers.0.self_attn.v_proj"
    _write_manual(tmp_path / "b", {"r": 2, "lora_alpha": 2},
                  {f"{key}.lora_A.default.weight": torch.ones(2, 4)})
    with pytest.raises(conv.ConversionError, match="lacks its lora_B"):
        conv.convert_peft_adapter(tmp_path / "b")
