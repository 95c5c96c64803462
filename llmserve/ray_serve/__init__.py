"""llmserve on Ray Serve (`llmserve serve --ray`, the `[ray]` extra): every replica a
full llmserve core, HTTP through Ray Serve's proxy and a forwarding ingress, and a
prefix-aware request router. Python entry point: llmserve.ray_serve.build_app."""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "RayServeOptions"]


def __getattr__(name: str) -> Any:  # Ray is imported only when the app is built
    if name in __all__:
        from llmserve.ray_serve import app

        return getattr(app, name)
    raise AttributeError(name)
