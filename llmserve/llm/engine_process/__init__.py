"""The executor in an engine process of its own (TensorRT-LLM's orchestrator mode, vLLM
v1's EngineCore): EngineProcessExecutor has Executor's API and talks to the engine over
ZMQ with msgpack messages. docs/PROCESS_MODEL.md describes the design.
"""

from llmserve.llm.engine_process.client import EngineProcessExecutor

__all__ = ["EngineProcessExecutor"]
