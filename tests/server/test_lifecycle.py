"""Model lifecycle through InferenceServer: poll-mode reload while serving, explicit
load/unload with config and file overrides, exit_on_error, readiness, draining stop."""

import asyncio
import json
import os
import time

import numpy as np
import pytest
from inproc_server import collect, make_request
from srv_helpers import copy_repo, server_for, slow

from llmserve.core.errors import ErrorCode, InvalidArgument, NotFound, ServerError, Unavailable


def _bump(model_py, version):
    text = model_py.read_text().replace("VERSION = 1", f"VERSION = {version}")
    model_py.write_text(text)
    st = model_py.stat()
    os.utime(model_py, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_poll_mode_reload_without_dropping_inflight(tmp_path):
    repo = copy_repo(tmp_path, ["slow", "add_sub"])

    async def run():
        server = server_for(repo, model_control_mode="poll", repository_poll_secs=0.1)
        await server.start()
        try:
            assert await slow(server) == 1
            inflight = asyncio.create_task(slow(server, 800))
            await asyncio.sleep(0.1)
            _bump(repo / "slow" / "1" / "model.py", 2)
            for _ in range(100):
                if await slow(server) == 2:
                    break
                await asyncio.sleep(0.05)
            assert await slow(server) == 2
            assert await inflight == 1  # the old version finished its request
            # a new model appears, a removed one goes away
            (repo / "add_sub").rename(tmp_path / "gone")
            import shutil

            shutil.copytree(tmp_path / "gone", repo / "add_sub2")
            for _ in range(100):
                if server.model_ready("add_sub2") and not server.model_ready("add_sub"):
                    break
                await asyncio.sleep(0.05)
            assert server.model_ready("add_sub2")
            with pytest.raises(InvalidArgument, match="unknown model"):
                server.model_config("add_sub")
        finally:
            await server.stop()

    asyncio.run(run())


def test_explicit_load_unload(tmp_path):
    repo = copy_repo(tmp_path, ["slow", "add_sub"])

    async def run():
        server = server_for(repo, model_control_mode="explicit", load_models=["slow"])
        await server.start()
        try:
            index = {r["name"]: r for r in server.repository_index()}
            assert index["slow"]["state"] == "READY" and index["add_sub"]["state"] == ""
            assert [r["name"] for r in server.repository_index(ready_only=True)] == ["slow"]
            with pytest.raises(InvalidArgument, match="Request for unknown model: 'add_sub' is not found"):
                await collect(server, make_request("add_sub", {}))
            await server.load_model("add_sub")
            assert server.model_ready("add_sub")
            await server.unload_model("slow")
            assert not server.model_ready("slow")
            with pytest.raises(NotFound, match="has no available versions"):
                await slow(server)
            row = [r for r in server.repository_index() if r["name"] == "slow"][0]
            assert row["state"] == "UNAVAILABLE" and row["reason"] == "unloaded"
            await server.load_model("slow")
            assert await slow(server) == 1
            with pytest.raises(ServerError, match="failed to poll"):
                await server.load_model("does_not_exist")
        finally:
            await server.stop()

    asyncio.run(run())


def test_a_serving_server_keeps_its_loaded_heap_out_of_garbage_collection(tmp_path,
                                                                         monkeypatch):
    """run_server's InferenceServer freezes what its first loads left (after a full
    collection), then what each later load adds, and collects again after an unload; an
    embedded one (freeze_heap False, as in these tests) leaves the host's heap alone
    (core/gc_freeze.py)."""
    import gc

    from llmserve.core import gc_freeze
    from llmserve.options import ServerOptions
    from llmserve.server import InferenceServer

    repo = copy_repo(tmp_path, ["slow", "add_sub"])
    collected: list[bool | str] = []  # per freeze: its collect; "refreeze" per unload
    real, real_refreeze = gc_freeze.freeze_loaded_heap, gc_freeze.refreeze_after_unload

    def spy(what, collect=True):
        collected.append(collect)
        return real(what, collect)

    def refreeze_spy(what):
        collected.append("refreeze")
        real_refreeze(what)

    monkeypatch.setattr("llmserve.server.freeze_loaded_heap", spy)
    monkeypatch.setattr("llmserve.models.manager.freeze_loaded_heap", spy)
    monkeypatch.setattr("llmserve.models.manager.refreeze_after_unload", refreeze_spy)

    async def run(freeze_heap):
        server = InferenceServer(ServerOptions(
            model_repositories=[repo], exit_timeout_secs=5, model_control_mode="explicit",
            load_models=["slow"]), freeze_heap=freeze_heap)
        await server.start()
        try:
            started = gc.get_freeze_count()
            await server.load_model("add_sub")
            loaded = gc.get_freeze_count()
            await server.unload_model("add_sub")
            return started, loaded
        finally:
            await server.stop()  # the end of the process: no refreeze

    try:
        before = gc.get_freeze_count()
        assert asyncio.run(run(False)) == (before, before) and collected == []
        started, loaded = asyncio.run(run(True))
        assert before < started <= loaded and collected == [True, False, "refreeze"]
    finally:
        gc.unfreeze()  # this test process's heap goes back to the collector


def test_load_with_config_override_and_files(tmp_path):
    repo = copy_repo(tmp_path, ["slow", "add_sub"])
    marker = tmp_path / "final.txt"

    async def run():
        server = server_for(repo, model_control_mode="explicit", load_models=["*"])
        await server.start()
        try:
            override = {"backend": "python", "max_batch_size": 0,
                        "input": [{"name": "X", "data_type": "TYPE_INT32", "dims": [1]}],
                        "output": [{"name": "V", "data_type": "TYPE_INT32", "dims": [1]}],
                        "parameters": {"finalize_marker": {"string_value": str(marker)}}}
            await server.load_model("slow", json.dumps(override))
            cfg = server.model_config("slow")
            assert cfg.parameters["finalize_marker"].string_value == str(marker)
            assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
            assert await slow(server) == 1
            source = (repo / "slow" / "1" / "model.py").read_text().replace("VERSION = 1", "VERSION = 7")
            await server.load_model("from_files", json.dumps(override),
                                    {"file:1/model.py": source.encode()})
            [resp] = await collect(server, make_request("from_files", {"X": np.array([0], np.int32)}))
            assert int(resp.output("V").data[0]) == 7
            with pytest.raises(InvalidArgument):
                await server.load_model("bad_files", json.dumps(override), {"file:../x.py": b""})
        finally:
            await server.stop()
        assert "finalized 1" in marker.read_text()  # finalize ran on unload
        assert "finalized 7" in marker.read_text()

    asyncio.run(run())


def test_exit_on_error_and_strict_readiness(tmp_path):
    repo = copy_repo(tmp_path, ["slow"])
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    (broken / "model.py").write_text("raise ImportError('missing dependency xyz')\n")

    async def run():
        server = server_for(repo)
        with pytest.raises(ServerError, match="broken"):
            await server.start()
        server = server_for(repo, exit_on_error=False)
        await server.start()
        try:
            assert server.is_live() and not server.is_ready()
            row = [r for r in server.repository_index() if r["name"] == "broken"][0]
            assert row["state"] == "UNAVAILABLE" and "missing dependency xyz" in row["reason"]
            assert await slow(server) == 1
        finally:
            await server.stop()
        server = server_for(repo, exit_on_error=False, strict_readiness=False)
        await server.start()
        assert server.is_ready()
        await server.stop()

    asyncio.run(run())


def test_stop_drains_inflight_then_refuses(tmp_path):
    repo = copy_repo(tmp_path, ["slow"])

    async def run():
        server = server_for(repo)
        await server.start()
        assert server.is_ready()
        inflight = asyncio.create_task(slow(server, 500))
        await asyncio.sleep(0.1)
        start = time.monotonic()
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        assert not server.is_ready()
        with pytest.raises(Unavailable):
            await slow(server)
        assert await inflight == 1
        await stopping
        assert time.monotonic() - start >= 0.3

    asyncio.run(run())


def test_metadata_stats_and_metrics(tmp_path):
    from prometheus_client import generate_latest

    repo = copy_repo(tmp_path, ["slow", "add_sub", "repeat"])

    async def run():
        server = server_for(repo)
        await server.start()
        try:
            assert server.metadata()["name"] == "llmserve"
            meta = server.model_metadata("add_sub")
            assert meta["versions"] == ["1"] and meta["platform"] == "python"
            assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}
            assert server.is_decoupled("repeat") and not server.is_decoupled("add_sub")
            with pytest.raises(NotFound):
                server.model_metadata("add_sub", "3")
            await slow(server)
            for _ in range(100):  # execution stats land right after execute returns
                stats = server.statistics("slow")["model_stats"][0]
                if stats["execution_count"]:
                    break
                await asyncio.sleep(0.01)
            assert stats["inference_stats"]["success"]["count"] == 1
            assert stats["execution_count"] == 1
            assert {s["name"] for s in server.statistics()["model_stats"]} == {"slow", "add_sub", "repeat"}
            text = generate_latest(server.metrics_registry).decode()
            assert 'nv_inference_request_success{model="slow",version="1"} 1.0' in text
            assert 'nv_inference_pending_request_count{model="slow",version="1"} 0.0' in text
            for name in ("nv_inference_count", "nv_inference_exec_count",
                         "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                         "nv_inference_request_failure"):
                assert name + '{model="slow",version="1"}' in text
            # as in Triton, per-model cache metrics only for models that use the cache
            assert 'nv_cache_num_hits_per_model{model="slow"' not in text
            with pytest.raises(ServerError) as info:
                await server.load_model("slow")
            assert info.value.code == ErrorCode.UNAVAILABLE  # not in explicit mode
        finally:
            await server.stop()

    asyncio.run(run())
