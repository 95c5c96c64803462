"""OpenAI-compatible API served by the HTTP frontend on the KServe
port: /v1/models, /v1/completions and /v1/chat/completions over the repository's
text-generation models."""

from llmserve.frontends.openai.routes import add_openai_schemas, openai_router

__all__ = ["add_openai_schemas", "openai_router"]
