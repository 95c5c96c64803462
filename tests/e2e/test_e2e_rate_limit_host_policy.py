"""Through tritonclient: with --rate-limit execution_count, instances of a group that
share one global resource never execute at the same time (they overlap without it); a
host policy pins an instance's worker thread to its CPUs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options

SPAN_MODEL = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        start = time.monotonic()
        time.sleep(0.15)
        end = time.monotonic()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("SPAN", np.array([start, end]))])
                for _ in requests]
'''
SPAN_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "SPAN" data_type: TYPE_FP64 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 2
  rate_limiter { resources [ { name: "R" global: true count: 1 } ] } } ]
"""


def _spans(url: str, n: int) -> list[tuple[float, float]]:
    def one(_):
        client = th.InferenceServerClient(url)
        try:
            inp = th.InferInput("X", [1], "FP32")
            inp.set_data_from_numpy(np.zeros(1, np.float32))
            return tuple(client.infer("span", [inp]).as_numpy("SPAN"))
        finally:
            client.close()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(one, range(n)))


def _overlaps(spans) -> bool:
    return any(b[0] < a[1] - 1e-3 for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("rate_limit", ["off", "execution_count"])
def test_instances_sharing_a_global_resource_take_turns(tmp_path, rate_limit):
    (tmp_path / "span" / "1").mkdir(parents=True)
    (tmp_path / "span" / "1" / "model.py").write_text(SPAN_MODEL)
    (tmp_path / "span" / "config.pbtxt").write_text(SPAN_CONFIG)
    server = LiveServer(e2e_options(model_repositories=[tmp_path], rate_limit=rate_limit))
    try:
        spans = _spans(server.http_url, 4)
    finally:
        server.stop()
    assert _overlaps(spans) == (rate_limit == "off"), spans


AFFINITY_MODEL = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        cpus = np.array(sorted(os.sched_getaffinity(0)), np.int32)  # this (worker) thread
        return [pb_utils.InferenceResponse([pb_utils.Tensor("CPUS", cpus)]) for _ in requests]
"""
AFFINITY_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "CPUS" data_type: TYPE_INT32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 host_policy: "pinned" } ]
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
@pytest.mark.parametrize("mode", ["stub", "in_process"])
def test_host_policy_pins_the_instance_thread(tmp_path, mode):
    """In a stub (Triton's way) the whole stub process runs on the policy's CPUs."""
    (tmp_path / "aff" / "1").mkdir(parents=True)
    (tmp_path / "aff" / "1" / "model.py").write_text(AFFINITY_MODEL)
    (tmp_path / "aff" / "config.pbtxt").write_text(AFFINITY_CONFIG)
    before = os.sched_getaffinity(0)
    cpu = min(before)
    server = LiveServer(e2e_options(model_repositories=[tmp_path],
                                    host_policies={"pinned": {"cpu-cores": str(cpu)}},
                                    backend_config={"python": {"execution-mode": mode}}))
    try:
        client = th.InferenceServerClient(server.http_url)
        inp = th.InferInput("X", [1], "FP32")
        inp.set_data_from_numpy(np.zeros(1, np.float32))
        assert client.infer("aff", [inp]).as_numpy("CPUS").tolist() == [cpu]
        client.close()
    finally:
        server.stop()
    assert os.sched_getaffinity(0) == before  # the test's own thread is untouched
