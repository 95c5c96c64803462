"""Guided decoding (structured output) with xgrammar: guides to grammars (grammars.py),
compiled off the engine thread and cached (compiler.py), masked into the sampler's logits
per sequence (matcher.py), and closed before max_tokens runs out (closing.py)."""

from llmserve.llm.guided.compiler import GuideCompiler, import_xgrammar
from llmserve.llm.guided.matcher import GuideMatcher, apply_guides, guided_rows

__all__ = ["GuideCompiler", "GuideMatcher", "apply_guides", "guided_rows", "import_xgrammar"]
