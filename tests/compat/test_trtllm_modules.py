"""Who gets the tensorrt_llm stand-in: a Python model's own imports, never sys.modules;
the real package when it is installed; and the stand-in's logger and tokenizer helper."""

from __future__ import annotations

import logging
import sys

import pytest
from llm_fixtures import build_tokenizer

from llmserve.backends.python.loader import import_model_module
from llmserve.compat import modules

MODEL = '''
import tensorrt_llm.bindings.executor as trtllm
import tensorrt_llm.logger as logger
from tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info


class TritonPythonModel:
    def execute(self, requests):
        import tensorrt_llm
        return tensorrt_llm
'''


@pytest.fixture
def fresh_tables(monkeypatch):
    """Forget which stand-ins were resolved (the test changes what is installed)."""
    monkeypatch.setattr(modules, "_tables", {})


def write_model(folder, text: str = MODEL):
    (folder / "1").mkdir(parents=True)
    path = folder / "1" / "model.py"
    path.write_text(text)
    return path


def test_a_model_gets_the_stand_in_and_sys_modules_stays_clean(tmp_path, fresh_tables):
    module = import_model_module(write_model(tmp_path / "m"), "m", 1)
    assert module.trtllm.__name__ == "llmserve.compat.tensorrt_llm.bindings.executor"
    assert module.trtllm.Executor.__module__ == "llmserve.compat.trtllm_executor"
    assert callable(module._xgrammar_tokenizer_info) and callable(module.logger.debug)
    # an import inside execute, long after the model loaded, gets it too
    assert module.TritonPythonModel().execute([]).__name__ == "llmserve.compat.tensorrt_llm"
    assert not any(name == "tensorrt_llm" or name.startswith("tensorrt_llm.")
                   for name in sys.modules)
    with pytest.raises(ModuleNotFoundError):
        import tensorrt_llm  # noqa: F401  (other code: the package is not installed)


def test_a_missing_submodule_is_an_import_error(tmp_path, fresh_tables):
    with pytest.raises(ModuleNotFoundError, match="tensorrt_llm.runtime"):
        import_model_module(write_model(tmp_path / "m", "import tensorrt_llm.runtime\n"), "m", 1)


def test_the_real_package_wins_when_installed(tmp_path, fresh_tables, monkeypatch):
    real = tmp_path / "site" / "tensorrt_llm"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        module = import_model_module(write_model(tmp_path / "m", "import tensorrt_llm\n"), "m", 1)
        assert module.tensorrt_llm.REAL is True
    finally:
        sys.modules.pop("tensorrt_llm", None)


def test_logger_writes_to_the_trt_llm_logger(caplog):
    from llmserve.compat.tensorrt_llm import logger

    with caplog.at_level(logging.DEBUG, logger="TRT-LLM"):
        logger.debug("inputs to llm: x")
        logger.logger.warning("careful")
    assert [r.getMessage() for r in caplog.records] == [
        "[TRT-LLM] [V] inputs to llm: x", "[TRT-LLM] [W] careful"]


def test_xgrammar_tokenizer_info():
    from llmserve.compat.tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info

    tok = build_tokenizer()
    info = _xgrammar_tokenizer_info(tok)
    assert info["encoded_vocab"][:3] == ["<pad>", "<s>", "</s>"]
    assert len(info["encoded_vocab"]) == len(tok.get_vocab())
    assert info["stop_token_ids"] == [tok.eos_token_id]
    assert '"model"' in info["tokenizer_str"]
