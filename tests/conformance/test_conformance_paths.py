"""The conformance artifacts are found (CI must not skip the conformance suite silently)."""

from conformance_paths import python_backend_examples, stock_fill_template, stock_model_set


def test_the_real_artifacts_are_there():
    assert (stock_model_set() / "ensemble" / "config.pbtxt").is_file()
    assert (stock_model_set() / "tensorrt_llm" / "1" / "model.py").is_file()
    assert stock_fill_template().is_file()
    assert (python_backend_examples() / "add_sub" / "client.py").is_file()
