import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from llmserve import cli
from llmserve.config import devices
from llmserve.options import ServerOptions

PY_CONFIG = """backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
PY_MODEL = "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"


@pytest.fixture(autouse=True)
def no_gpus(monkeypatch):
    monkeypatch.setattr(devices, "_probe", lambda: ())


def make_model(root: Path, name: str, config: str | None = PY_CONFIG,
               extra: dict[str, str] | None = None) -> Path:
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(PY_MODEL)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for rel, text in (extra or {}).items():
        path = model_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return model_dir


def test_serve_defaults_match_server_options():
    options = cli.parse_serve_args(["--model-repository", "/r"])
    expected = ServerOptions(model_repositories=[Path("/r")])
    assert options == expected


def test_every_serve_flag_both_spellings():
    argv = [
        "--model-repository=/a", "--model-store", "/b",
        "--model-control-mode", "explicit", "--load-model=x", "--load-model", "*",
        "--repository-poll-secs=2.5", "--model-config-name", "h100",
        "--disable-auto-complete-config",
        "--backend-config=default-max-batch-size=8", "--backend-config",
        "python,shm-region-prefix-name=prefix0_",
        "--exit-on-error=false", "--strict-readiness", "0",
        "--http-port=9000", "--grpc-port", "9001", "--metrics-port=0",
        "--http-address", "127.0.0.1", "--grpc-address=127.0.0.2",
        "--metrics-address", "127.0.0.3",
        "--allow-http=1", "--allow-grpc", "false", "--allow-metrics=False",
        "--log-verbose=2", "--cache-config", "local,size=1048576",
        "--rate-limit=execution_count", "--rate-limit-resource", "R1:4",
        "--rate-limit-resource=R2:2:1", "--model-load-thread-count", "8",
        "--exit-timeout-secs=5", "--http-max-input-size", "1024",
    ]
    o = cli.parse_serve_args(argv)
    assert o.model_repositories == [Path("/a"), Path("/b")]
    assert (o.model_control_mode, o.load_models) == ("explicit", ["x", "*"])
    assert o.repository_poll_secs == 2.5 and o.model_config_name == "h100"
    assert o.disable_auto_complete_config is True
    assert o.backend_config == {"": {"default-max-batch-size": "8"},
                                "python": {"shm-region-prefix-name": "prefix0_"}}
    assert o.default_max_batch_size() == 8
    assert (o.exit_on_error, o.strict_readiness) == (False, False)
    assert (o.http_port, o.grpc_port, o.metrics_port) == (9000, 9001, 0)
    assert (o.http_address, o.grpc_address, o.metrics_address) == (
        "127.0.0.1", "127.0.0.2", "127.0.0.3")
    assert (o.allow_http, o.allow_grpc, o.allow_metrics) == (True, False, False)
    assert o.log_verbose == 2
    assert o.cache_config == {"cache": "local", "size": "1048576"}
    assert o.rate_limit == "execution_count"
    assert o.rate_limit_resources == [("R1", 4, None), ("R2", 2, 1)]
    assert (o.model_load_thread_count, o.exit_timeout_secs) == (8, 5.0)
    assert o.http_max_body_bytes == 1024


def test_cache_flags():
    o = cli.parse_serve_args(["--model-repository", "/r", "--response-cache-byte-size", "4096",
                              "--cache-directory", "/opt/tritonserver/caches"])
    assert o.cache_config == {"cache": "local", "size": "4096"}
    assert o.cache_directory == "/opt/tritonserver/caches"
    assert cli.parse_serve_args(["--model-repository", "/r"]).cache_config == {}


def test_bare_boolean_flag_means_true_and_strict_model_config():
    o = cli.parse_serve_args(["--model-repository", "/r", "--allow-grpc"])
    assert o.allow_grpc is True
    o = cli.parse_serve_args(["--model-repository", "/r", "--strict-model-config=true"])
    assert o.disable_auto_complete_config is True
    o = cli.parse_serve_args(["--model-repository", "/r", "--strict-model-config=false"])
    assert o.disable_auto_complete_config is False


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "at least one --model-repository is required"),
        (["--model-repository=/r", "--exit-on-error=maybe"], "expected true or false"),
        (["--model-repository=/r", "--http-port=70000"], "port must be in 0..65535"),
        (["--model-repository=/r", "--model-control-mode=sometimes"], "invalid choice"),
        (["--model-repository=/r", "--backend-config=novalue"], "[BACKEND,]KEY=VALUE"),
        (["--model-repository=/r", "--rate-limit-resource=R1"], "NAME:COUNT[:DEVICE]"),
        (["--model-repository=/r", "--cache-config=local"], "CACHE,KEY=VALUE"),
        (["--model-repository=/r", "--cache-config=redis,host=h"], "unable to find cache 'redis'"),
        (["--model-repository=/r", "--cache-config=local,x=1"], "valid 'size' field"),
        (["--model-repository=/r", "--cache-config=local,size=-1"], "non-negative number"),
        (["--model-repository=/r", "--cache-config=local,size=8", "--response-cache-byte-size=8"],
         "Incompatible flags --response-cache-byte-size and --cache-config"),
        (["--model-repository=/r", "--model-config-name=a b"], "invalid model config name"),
        (["--model-repository=/r", "--backend-config=default-max-batch-size=x"],
         "default-max-batch-size must be an integer"),
        # the Python backend's settings, with Triton's messages
        (["--model-repository=/r", "--backend-config=python,stub-timeout-seconds=0"],
         "stub-timeout-seconds can't be smaller than or equal to zero."),
        (["--model-repository=/r", "--backend-config=python,shm-default-byte-size=1000"],
         "shm-default-byte-size can't be smaller than 1 MiB"),
        (["--model-repository=/r", "--backend-config=python,shm-growth-byte-size=0"],
         "shm-growth-byte-size can't be smaller than or equal to zero."),
        (["--model-repository=/r", "--backend-config=python,thread-pool-size=0"],
         "thread-pool-size can't be less than 1."),
        (["--model-repository=/r", "--backend-config=python,execution-mode=fork"],
         "must be 'stub' or 'in_process'"),
    ],
)
def test_bad_flags_exit_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_serve_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_calls_run_server(monkeypatch, caplog):
    seen = {}

    def run_server(options):
        seen["options"] = options
        return 3

    monkeypatch.setitem(sys.modules, "llmserve.server", types.SimpleNamespace(
        run_server=run_server))
    monkeypatch.setattr(cli, "setup_logging", lambda args: None)
    with caplog.at_level(logging.WARNING):
        rc = cli.main(["serve", "--model-repository", "/r", "--http-port=1234",
                       "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size", "0"])
    assert rc == 3
    assert seen["options"].http_port == 1234
    assert "--allow-gpu-metrics is accepted for tritonserver compatibility" in caplog.text
    assert "--pinned-memory-pool-byte-size" in caplog.text


def test_setup_logging_levels_and_file(tmp_path):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        args = cli.build_parser().parse_args(
            ["serve", "--model-repository=/r", "--log-verbose=1",
             f"--log-file={tmp_path / 'log.txt'}"])
        cli.setup_logging(args)
        assert root.level == logging.DEBUG
        logging.getLogger("llmserve.test").info("hello file")
        for handler in root.handlers:
            handler.flush()
        assert "hello file" in (tmp_path / "log.txt").read_text()
        args = cli.build_parser().parse_args(["serve", "--model-repository=/r",
                                              "--log-info=false"])
        cli.setup_logging(args)
        assert root.level == logging.WARNING
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = saved


def test_config_show_prints_completed_json(tmp_path, capsys):
    make_model(tmp_path, "m")
    assert cli.main(["config", "show", "--model-repository", str(tmp_path), "m"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "m" and data["backend"] == "python"
    assert data["input"][0]["dims"] == [4]
    assert data["instance_group"][0]["kind"] == "KIND_CPU"


def test_config_show_options(tmp_path, capsys):
    make_model(tmp_path, "m", extra={"configs/h100.pbtxt": PY_CONFIG.replace("8", "2")})
    argv = ["config", "show", f"--model-repository={tmp_path}", "--model-config-name=h100"]
    assert cli.main([*argv, "m"]) == 0
    assert json.loads(capsys.readouterr().out)["max_batch_size"] == 2
    assert cli.main([*argv, "--format", "pbtxt", "m"]) == 0
    assert "max_batch_size: 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "config, message",
    [
        ('backend: "python"\nmax_batch_size: -3\n', "config.pbtxt: 'max_batch_size' must be "
         "non-negative value for m"),
        ('backend: "python"\nmax_batch_size: ${triton_max_batch_size}\n',
         "config.pbtxt:2:17: "),
        ('backend: "python"\nversion_policy { specific { versions: [ 9 ] } }\n',
         "at least one version must be available"),
    ],
)
def test_config_show_broken_model_one_line(tmp_path, capsys, config, message):
    make_model(tmp_path, "m", config=config)
    assert cli.main(["config", "show", "--model-repository", str(tmp_path), "m"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message in err


def test_config_show_unknown_model(tmp_path, capsys):
    assert cli.main(["config", "show", "--model-repository", str(tmp_path), "nope"]) == 1
    assert "model 'nope' not found in model repository" in capsys.readouterr().err
    assert cli.main(["config", "show", "--model-repository", str(tmp_path), "../x"]) == 1
    assert "is a path, not a model name" in capsys.readouterr().err


def test_config_show_as_a_process_has_no_traceback(tmp_path):
    make_model(tmp_path, "m", config='backend: "python"\ninput [ { name: "X" dims: [ 1 ] } ]\n')
    result = subprocess.run(
        [sys.executable, "-m", "llmserve.cli", "config", "show", "--model-repository",
         str(tmp_path), "m"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {tmp_path / 'm' / 'config.pbtxt'}:2: model input "
                                     "'X' must specify 'data_type' for m")


ENSEMBLE = """platform: "ensemble"
max_batch_size: 8
input [ { name: "text" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "result" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "m" model_version: -1
  input_map { key: "IN" value: "text" } output_map { key: "OUT" value: "result" } } ] }
"""


def test_config_show_checks_ensemble_steps(tmp_path, capsys):
    make_model(tmp_path, "m")
    (tmp_path / "ens" / "1").mkdir(parents=True)
    (tmp_path / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    assert cli.main(["config", "show", "--model-repository", str(tmp_path), "ens"]) == 0
    assert json.loads(capsys.readouterr().out)["platform"] == "ensemble"
    (tmp_path / "ens" / "config.pbtxt").write_text(ENSEMBLE.replace('key: "OUT"', 'key: "O"'))
    assert cli.main(["config", "show", "--model-repository", str(tmp_path), "ens"]) == 1
    assert "output_map names 'O', which is not an output of model 'm'" in \
        capsys.readouterr().err


def test_serve_leaves_one_cpu_to_the_frontends(monkeypatch):
    from llmserve.cli import reserve_frontend_cpu

    monkeypatch.setenv("LLMSERVE_ENGINE_THREADS", "")  # restored after the test
    monkeypatch.setenv("LLMSERVE_ENGINE_NICE", "")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    reserve_frontend_cpu()
    assert os.environ["LLMSERVE_ENGINE_THREADS"] == "3"
    assert os.environ["LLMSERVE_ENGINE_NICE"] == "-10"  # the engine's serving priority
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LLMSERVE_ENGINE_THREADS")
    reserve_frontend_cpu()
    assert os.environ["LLMSERVE_ENGINE_THREADS"] == "1"
    monkeypatch.setenv("LLMSERVE_ENGINE_THREADS", "2")  # the user's choice wins
    monkeypatch.setenv("LLMSERVE_ENGINE_NICE", "0")
    reserve_frontend_cpu()
    assert os.environ["LLMSERVE_ENGINE_THREADS"] == "2"
    assert os.environ["LLMSERVE_ENGINE_NICE"] == "0"
