"""`llmserve serve --ray` flags into RayServeOptions (fixed count or autoscaling, placement)
and the Ray Serve application builders, without starting Ray."""

from __future__ import annotations

import pytest
from ray.serve import Application

from llmserve.cli import main
from llmserve.ray_serve import RayServeOptions, build_app
from llmserve.ray_serve.app import app_builder
from llmserve.ray_serve.cli_flags import parse_ray_serve_args


def test_fixed_replicas_and_placement(tmp_path):
    options, ro = parse_ray_serve_args([
        "--model-repository", str(tmp_path), "--replicas", "3", "--ray-num-cpus", "2",
        "--ray-num-gpus", "0.5", "--ray-address", "ray://head:10001", "--http-port", "9000"])
    assert options.http_port == 9000 and options.model_repositories == [tmp_path]
    assert (ro.replicas, ro.num_cpus, ro.num_gpus, ro.address) == (3, 2.0, 0.5, "ray://head:10001")
    assert ro.autoscaling() is None


def test_autoscaling_between_min_and_max(tmp_path):
    _, ro = parse_ray_serve_args(["--model-repository", str(tmp_path), "--min-replicas", "1",
                                  "--max-replicas", "4", "--target-ongoing-requests", "16"])
    assert ro.autoscaling() == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                "target_ongoing_requests": 16.0}


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2"], "only apply with --ray"),
    (["--ray", "--replicas", "2", "--max-replicas", "3"], "either it or --min-replicas"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "is above --max-replicas"),
    (["--ray", "--replicas", "0"], "positive integer"),
])
def test_bad_flags_are_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model-repository", str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_builders_bind_the_ingress_to_the_replicas(tmp_path):
    options, _ = parse_ray_serve_args(["--model-repository", str(tmp_path)])
    assert isinstance(build_app(options, RayServeOptions(replicas=2)), Application)
    assert isinstance(app_builder({"model-repository": str(tmp_path), "replicas": "2"}),
                      Application)
