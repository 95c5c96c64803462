"""Stand-ins for other projects' Python packages, built on llmserve's own parts.

`tensorrt_llm/` mirrors the parts of TensorRT-LLM's Python API that model code written
for Triton's TensorRT-LLM backend imports (its executor bindings, logger, tokenizer
helpers). The Python backend serves it to a model only where the real package is not
installed, through that model's private module table (llmserve/compat/modules.py).
"""
