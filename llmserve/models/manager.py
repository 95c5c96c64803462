"""Model lifecycle: control modes none / poll / explicit, parallel loads, reload without
dropping in-flight requests (the old version serves until the new one is ready), unload
with draining, load-API config overrides and files, ensemble dependencies."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from llmserve.core.errors import InvalidArgument, NotFound, ServerError, Unavailable
from llmserve.core.gc_freeze import freeze_loaded_heap, refreeze_after_unload
from llmserve.models.entry import ModelEntry, dir_signature
from llmserve.models.version import ModelState, ModelVersion
from llmserve.repository import find_model, load_model_config, scan_repositories, select_versions
from llmserve.repository.naming import check_model_name, printable

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ServerError) else f"{type(exc).__name__}: {exc}"


class VersionLoadError(InvalidArgument):
    def __init__(self, message: str, version: ModelVersion):
        super().__init__(message)
        self.version = version


class ModelManager:
    def __init__(self, server: Any):
        self.server = server
        self.options = server.options
        self.entries: dict[str, ModelEntry] = {}
        self.pool = ThreadPoolExecutor(max(1, int(self.options.model_load_thread_count)),
                                       thread_name_prefix="model-load")
        self._poll_task: asyncio.Task | None = None
        # set once the server has frozen its loaded heap (core/gc_freeze.py): each later
        # load freezes what it added, without the full collection that would stall
        # serving; an unload thaws, collects and freezes again (its cycles are garbage)
        self.freeze_later_loads = False

    @property
    def roots(self) -> list[Path]:
        return [Path(p) for p in self.options.model_repositories]

    # -- start / stop -------------------------------------------------------------------
    async def start(self) -> list[tuple[str, str]]:
        """Load per the control mode; returns (model, reason) for every failed model."""
        mode = self.options.model_control_mode
        if mode == "explicit":
            names = list(self.options.load_models)
            if "*" in names:
                names = sorted(set(scan_repositories(self.roots)) | {n for n in names if n != "*"})
        else:
            names = sorted(scan_repositories(self.roots))
        failures = await self._load_many(names)
        if mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop())
        return failures

    async def _load_many(self, names: list[str]) -> list[tuple[str, str]]:
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        return [(n, _reason(r)) for n, r in zip(names, results, strict=False) if isinstance(r, BaseException)]

    async def stop(self, drain_timeout: float | None) -> None:
        self.freeze_later_loads = False  # the process is ending: no collection to pay for
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        await asyncio.gather(*(self.unload(n, drain_timeout=drain_timeout)
                               for n in list(self.entries)), return_exceptions=True)
        self.pool.shutdown(wait=False)

    # -- lookup -------------------------------------------------------------------------
    def resolve(self, name: str, version: str | int = "") -> ModelVersion:
        entry = self.entries.get(name)
        if entry is None or (not entry.versions and entry.model_dir is None):
            raise InvalidArgument(f"Request for unknown model: '{name}' is not found")
        if version in ("", -1, None):
            ready = entry.ready_versions()
            if not ready:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return ready[-1]
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise InvalidArgument(f"Request for unknown model: '{name}' version '{version}' is not valid") from None
        mv = entry.versions.get(number)
        if mv is None:
            raise NotFound(f"Request for unknown model: '{name}' version {number} is not found")
        if mv.state != ModelState.READY:
            raise Unavailable(f"Request for unknown model: '{name}' version {number} is not at ready state")
        return mv

    def all_versions(self) -> list[ModelVersion]:
        return [v for e in list(self.entries.values()) for v in list(e.versions.values())]

    # -- load ---------------------------------------------------------------------------
    def _entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = ModelEntry(name)
        return entry

    def _files_dir(self, name: str, files: dict[str, bytes]) -> Path:
        base = Path(tempfile.mkdtemp(prefix="llmserve-load-"))
        model_dir = base / name
        model_dir.mkdir()
        for key, content in files.items():
            if not key.startswith("file:"):
                shutil.rmtree(base, ignore_errors=True)
                raise InvalidArgument(f"unexpected load parameter '{key}': file contents must be "
                                      "given as 'file:<relative path>'")
            rel = Path(key[len("file:"):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\0" in key:
                shutil.rmtree(base, ignore_errors=True)
                raise InvalidArgument(f"invalid file path '{printable(str(rel))}' in load "
                                      f"request of '{printable(name)}'")
            target = model_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(content))
        return model_dir

    async def load(self, name: str, config_json: str | None = None,
                   files: dict[str, bytes] | None = None) -> None:
        """Load or reload `name`; raises ServerError with the reason when it fails."""
        while True:
            entry = self._entry(name)
            async with entry.lock:
                if self.entries.get(name) is not entry:
                    continue  # a failed load dropped it while we waited: start over
                old, old_temp = await self._load_locked(name, entry, config_json, files)
                break
        if self.freeze_later_loads:
            freeze_loaded_heap(f"model '{name}'", collect=False)
        stale = [v for v in old.values() if v.state != ModelState.UNAVAILABLE]
        if stale or old_temp is not None:
            # the previous versions finish their in-flight requests in the background
            asyncio.create_task(self._retire(stale, old_temp))

    def _forget_if_no_model(self, name: str, entry: ModelEntry) -> None:
        """Drop the entry of a failed load whose name is no model folder (a client's
        typo, a path, a load from files that failed) unless it still serves versions,
        so failed loads cannot grow the repository index without bound."""
        if entry.ready_versions():
            return
        try:
            in_repository = bool(self.roots) and find_model(self.roots, name) is not None
        except ServerError:
            in_repository = False
        if not in_repository and self.entries.get(name) is entry:
            self.entries.pop(name, None)

    async def _load_locked(self, name: str, entry: ModelEntry, config_json: str | None,
                           files: dict[str, bytes] | None) -> tuple[dict, Path | None]:
        temp_dir = None
        try:
            if files:
                if not config_json:
                    raise InvalidArgument(f"failed to load '{printable(name)}': a config must "
                                          "be given together with files")
                check_model_name(name)  # it becomes a folder name
                temp_dir = self._files_dir(name, files)
                model_dir = temp_dir
            else:
                model_dir = find_model(self.roots, name) if self.roots else None
                if model_dir is None and config_json is None:
                    raise InvalidArgument(f"failed to load '{printable(name)}', failed to poll "
                                          "from model repository")
                if model_dir is None:
                    raise InvalidArgument(f"failed to load '{printable(name)}': no model folder "
                                          "in the repository")
        except BaseException:
            self._forget_if_no_model(name, entry)
            raise
        loop = asyncio.get_running_loop()
        signature = dir_signature(model_dir)
        try:
            config = await loop.run_in_executor(
                self.pool, load_model_config, model_dir, self.options, config_json)
            await self._load_dependencies(name, config)
            new = await loop.run_in_executor(self.pool, self._load_versions, name, model_dir, config)
        except BaseException as exc:
            if temp_dir is not None:
                shutil.rmtree(temp_dir.parent, ignore_errors=True)
            entry.signature = signature  # poll mode retries only after another change
            if not entry.ready_versions():
                entry.state, entry.reason = ModelState.UNAVAILABLE, _reason(exc)
                entry.model_dir = entry.model_dir or model_dir
                failed = getattr(exc, "version", None)
                entry.versions = {failed.version: failed} if failed is not None else {}
            log.error("failed to load model '%s': %s", printable(name),
                      printable(_reason(exc), limit=4000))
            if temp_dir is not None:
                self._forget_if_no_model(name, entry)
            raise
        old, old_temp = entry.versions, entry.temp_dir
        entry.versions, entry.config, entry.model_dir = new, config, model_dir
        entry.temp_dir, entry.signature = temp_dir, signature
        entry.state, entry.reason = ModelState.READY, ""
        log.info("loaded model '%s' version(s) %s", printable(name), sorted(new))
        return old, old_temp

    def _load_versions(self, name: str, model_dir: Path, config: mc.ModelConfig) -> dict[int, ModelVersion]:
        versions = select_versions(model_dir, config)
        loaded: dict[int, ModelVersion] = {}
        for number in versions:
            mv = ModelVersion(name, number, model_dir, config, self.server)
            try:
                mv.load()
            except BaseException as exc:
                for other in loaded.values():
                    other.unload(0)
                mv.state, mv.reason = ModelState.UNAVAILABLE, _reason(exc)
                raise VersionLoadError(
                    f"load failed for model '{name}': version {number} is at UNAVAILABLE state: "
                    f"{mv.reason};", mv) from exc
            loaded[number] = mv
        return loaded

    async def _load_dependencies(self, name: str, config: mc.ModelConfig) -> None:
        if not config.HasField("ensemble_scheduling"):
            return
        for step in config.ensemble_scheduling.step:
            dep = step.model_name
            if dep == name:
                continue
            entry = self.entries.get(dep)
            if entry is not None:
                async with entry.lock:  # wait for a load that is in progress
                    pass
            if (entry is None or not entry.ready_versions()) and self.options.model_control_mode == "explicit":
                await self.load(dep)
            entry = self.entries.get(dep)
            if entry is None or not entry.ready_versions():
                raise Unavailable(f"ensemble '{name}' depends on '{dep}' which is not available")

    async def _retire(self, versions: list[ModelVersion], temp_dir: Path | None) -> None:
        loop = asyncio.get_running_loop()
        for mv in versions:
            await loop.run_in_executor(None, mv.unload, None)
        if temp_dir is not None:
            shutil.rmtree(temp_dir.parent, ignore_errors=True)
        if versions and self.freeze_later_loads:
            refreeze_after_unload(f"model '{versions[0].name}' retired")

    # -- unload -------------------------------------------------------------------------
    async def unload(self, name: str, unload_dependents: bool = False,
                     drain_timeout: float | None = None) -> None:
        entry = self.entries.get(name)
        if entry is None:
            return
        async with entry.lock:
            versions = list(entry.versions.values())
            for mv in versions:
                if mv.state == ModelState.READY:
                    mv.state = ModelState.UNLOADING
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, mv.unload, drain_timeout)
                                   for mv in versions))
            config = entry.config
            if entry.temp_dir is not None:
                shutil.rmtree(entry.temp_dir.parent, ignore_errors=True)
                entry.temp_dir = None
                entry.model_dir = find_model(self.roots, name) if self.roots else None
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"
            log.info("unloaded model '%s'", printable(name))
            if versions and self.freeze_later_loads:
                refreeze_after_unload(f"model '{name}' unloaded")
        if unload_dependents and config is not None and config.HasField("ensemble_scheduling"):
            for step in config.ensemble_scheduling.step:
                if step.model_name != name:
                    await self.unload(step.model_name, True, drain_timeout)

    # -- poll mode ----------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(max(float(self.options.repository_poll_secs), 0.05))
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load new models, unload removed ones, reload changed ones."""
        def skipped(problem: ServerError) -> None:
            log.error("repository poll: %s", problem)

        try:
            found = scan_repositories(self.roots, skipped)
        except ServerError as exc:
            log.error("repository poll: %s", exc)
            return
        tasks = []
        for name, model_dir in found.items():
            entry = self.entries.get(name)
            if entry is None or entry.temp_dir is None and (
                    entry.model_dir != model_dir or dir_signature(model_dir) != entry.signature):
                tasks.append(self.load(name))
        for name, entry in list(self.entries.items()):
            if name not in found and entry.temp_dir is None and entry.versions:
                tasks.append(self._unload_removed(name))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _unload_removed(self, name: str) -> None:
        await self.unload(name)
        self.entries.pop(name, None)
