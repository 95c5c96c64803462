"""Triton python_backend's own examples, unchanged: their models laid out in a model
repository the way their READMEs say, served by `llmserve serve`, checked by their own
client scripts (run unchanged, on the ports they hard-code)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conformance_paths import python_backend_examples
from isolated_server import IsolatedServer

# model name -> (model file, config.pbtxt or None), as the examples' READMEs copy them;
# the auto_complete models come without a config (their auto_complete_config fills it)
LAYOUT: dict[str, tuple[str, str | None]] = {
    "add_sub": ("add_sub/model.py", "add_sub/config.pbtxt"),
    "pytorch": ("pytorch/model.py", "pytorch/config.pbtxt"),
    "bls_sync": ("bls/sync_model.py", "bls/sync_config.pbtxt"),
    "bls_async": ("bls/async_model.py", "bls/async_config.pbtxt"),
    "square_int32": ("decoupled/square_model.py", "decoupled/square_config.pbtxt"),
    "repeat_int32": ("decoupled/repeat_model.py", "decoupled/repeat_config.pbtxt"),
    "bls_decoupled_sync": ("bls_decoupled/sync_model.py", "bls_decoupled/sync_config.pbtxt"),
    "bls_decoupled_async": ("bls_decoupled/async_model.py", "bls_decoupled/async_config.pbtxt"),
    "custom_metrics": ("custom_metrics/model.py", "custom_metrics/config.pbtxt"),
    "nobatch_auto_complete": ("auto_complete/nobatch_model.py", None),
    "batch_auto_complete": ("auto_complete/batch_model.py", None),
}

# client script -> lines its output must hold (beyond exiting 0)
CLIENTS: dict[str, list[str]] = {
    "add_sub/client.py": ["PASS: add_sub"],
    "pytorch/client.py": ["PASS: pytorch"],
    "bls/sync_client.py": [
        "=========='add_sub' model result==========",
        "=========='pytorch' model result==========",
        # the third call names a model that does not exist; the BLS model raises its error
        "TritonModelException: Failed for execute the inference request. "
        "Model 'undefined_model' is not ready.",
        "PASS: BLS Sync",
    ],
    "bls/async_client.py": ["PASS: BLS Async"],
    "bls_decoupled/sync_client.py": ["The square value of [4] is [16]",
                                     "The square value of [0] is [0]", "PASS: BLS Decoupled Sync"],
    "bls_decoupled/async_client.py": ["Two times the square value of [4] is [32]",
                                      "PASS: BLS Decoupled Async"],
    "decoupled/square_client.py": ["PASS: square_int32"],
    "decoupled/repeat_client.py": ["PASS: repeat_int32"],
    "custom_metrics/client.py": [
        "found pattern '# HELP requests_process_latency_ns Cumulative time spent processing requests'",
        "found pattern '# TYPE requests_process_latency_ns counter'",
        "found pattern 'requests_process_latency_ns{model=\"custom_metrics\",version=\"1\"}'",
        "PASS: custom_metrics",
    ],
    "auto_complete/client.py": [
        "'nobatch_auto_complete' configuration matches the expected auto complete configuration",
        "'batch_auto_complete' configuration matches the expected auto complete configuration",
        "PASS: auto_complete",
    ],
}


def lay_out_repository(examples: Path, repo: Path) -> None:
    for name, (model_file, config) in LAYOUT.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_bytes((examples / model_file).read_bytes())
        if config is not None:
            (repo / name / "config.pbtxt").write_bytes((examples / config).read_bytes())


@pytest.fixture(scope="module")
def examples_server(tmp_path_factory):
    """One server over every example model (they fit one repository, as BLS needs)."""
    examples = python_backend_examples()
    missing = [c for c in CLIENTS if not (examples / c).is_file()]
    missing += [f for pair in LAYOUT.values() for f in pair if f and not (examples / f).is_file()]
    assert not missing, f"python_backend examples lack {missing} under {examples}"
    root = tmp_path_factory.mktemp("python_backend_examples")
    lay_out_repository(examples, root / "models")
    server = IsolatedServer(root / "models", root / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("client", list(CLIENTS))
def test_example_client_passes(examples_server, client):
    result = examples_server.run_client(python_backend_examples() / client)
    report = (f"{client} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
              f"--- stderr\n{result.stderr[-4000:]}\n--- server log\n{examples_server.log_tail()}")
    assert result.returncode == 0, report
    for line in CLIENTS[client]:
        assert line in result.stdout, f"missing {line!r}\n{report}"


def test_custom_metrics_model_logs_through_pb_utils_logger(examples_server):
    """The README's server-side line: the model's pb_utils.Logger output reaches the log."""
    examples_server.run_client(python_backend_examples() / "custom_metrics/client.py")
    assert "Cumulative requests processing latency:" in examples_server.log_path.read_text(errors="replace")
