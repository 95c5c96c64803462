"""The routing key of a forwarded request (its prompt's text or token ids, read from the
OpenAI, generate or KServe infer body) cut into fixed chunks and chain-hashed as the
replicas' block-hash prefix cache hashes its blocks, and PrefixIndex: which replica was
last sent each chunk chain, so a request goes where its longest prefix already is."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

from llmserve.ray_serve.forward import ForwardedRequest

TEXT_INPUTS = ("text_input", "prompt")
ID_INPUTS = ("input_ids",)


def _header(req: ForwardedRequest, name: bytes) -> bytes | None:
    for key, value in req.headers:
        if key.lower() == name:
            return value
    return None


def _chat_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            return None
        content = m.get("content")
        if isinstance(content, list):  # content parts: the text ones, in order
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"{m.get('role', '')}\n{content or ''}\n")
    return "".join(parts)


def _first(value: Any) -> Any:
    """A batch of one (or a list of prompts): the first prompt."""
    while isinstance(value, list) and value and isinstance(value[0], (list, str)):
        value = value[0]
    return value


def _binary_tensor(raw: bytes, datatype: str) -> Any:
    if datatype == "BYTES":  # 4-byte little-endian length, then the bytes
        if len(raw) < 4:
            return None
        (n,) = struct.unpack_from("<I", raw)
        return raw[4:4 + n].decode("utf-8", errors="replace")
    if datatype in ("INT32", "UINT32"):
        return list(struct.unpack(f"<{len(raw) // 4}i", raw[:len(raw) // 4 * 4]))
    if datatype in ("INT64", "UINT64"):
        return list(struct.unpack(f"<{len(raw) // 8}q", raw[:len(raw) // 8 * 8]))
    return None


def _infer_prompt(header: dict, binary: bytes) -> Any:
    """The first text or id input of a KServe v2 infer body (JSON or binary tensors)."""
    offset = 0
    found: dict[str, Any] = {}
    for tensor in header.get("inputs") or []:
        if not isinstance(tensor, dict):
            return None
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if isinstance(size, int):
            value = _binary_tensor(binary[offset:offset + size], str(tensor.get("datatype")))
            offset += size
        else:
            value = tensor.get("data")
        found[str(tensor.get("name"))] = value
    for name in (*TEXT_INPUTS, *ID_INPUTS):
        if name in found:
            return _first(found[name])
    return None


def request_prompt(req: ForwardedRequest) -> tuple[str, Any] | None:
    """(model, prompt text or token id list) of an inference request, None for others."""
    if req.method != "POST":
        return None
    parts = req.path.strip("/").split("/")
    try:
        if parts[:1] == ["v1"]:
            body = json.loads(req.body)
            model = str(body.get("model", ""))
            if parts[1:] == ["chat", "completions"]:
                return model, _chat_text(body.get("messages"))
            if parts[1:] == ["completions"]:
                return model, _first(body.get("prompt"))
            return None
        if parts[:2] != ["v2", "models"] or len(parts) < 4:
            return None
        model, action = parts[2], parts[-1]
        if action in ("generate", "generate_stream"):
            body = json.loads(req.body)
            for name in (*TEXT_INPUTS, *ID_INPUTS):
                if name in body:
                    return model, _first(body[name])
            return None
        if action == "infer":
            length = _header(req, b"inference-header-content-length")
            cut = int(length) if length is not None else len(req.body)
            return model, _infer_prompt(json.loads(req.body[:cut]), req.body[cut:])
    except (ValueError, AttributeError, TypeError, struct.error):
        return None  # a malformed body is the replica's to refuse, with its own error
    return None


def chunk_hashes(req: ForwardedRequest, chunk_chars: int, chunk_tokens: int) -> list[int]:
    """Chain hashes of the prompt's full chunks: chunk i's hash covers chunks 0..i, so
    two prompts share hash i exactly when they share their first i+1 chunks (as two
    sequences share a KV block exactly when they share every token up to its end). The
    model name seeds the chain: each model has its own cache."""
    found = request_prompt(req)
    if found is None:
        return []
    model, prompt = found
    if isinstance(prompt, str):
        units: Any = prompt
        size = chunk_chars
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        units, size = prompt, chunk_tokens
    else:
        return []
    hashes = []
    parent: Hashable = model
    for start in range(0, len(units) - size + 1, size):
        chunk = units[start:start + size]
        parent = hash((parent, chunk if isinstance(chunk, str) else tuple(chunk)))
        hashes.append(parent)
    return hashes


class PrefixIndex:
    """Chunk chain hash -> the replicas that were sent it, least recently used first;
    bounded like the replicas' caches are, so stale prefixes age out."""

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        self._owners: OrderedDict[int, set[Hashable]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def match(self, hashes: list[int], candidates: Iterable[Hashable]) -> tuple[set, int]:
        """The candidates holding the longest prefix of hashes, and its length in chunks
        (an empty set and 0 when none holds even the first chunk)."""
        holders = set(candidates)
        depth = 0
        for h in hashes:
            owners = self._owners.get(h)
            narrowed = holders & owners if owners else set()
            if not narrowed:
                break
            holders, depth = narrowed, depth + 1
        return (holders, depth) if depth else (set(), 0)

    def insert(self, hashes: list[int], replica: Hashable) -> None:
        for h in hashes:
            owners = self._owners.get(h)
            if owners is None:
                self._owners[h] = {replica}
            else:
                owners.add(replica)
                self._owners.move_to_end(h)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def drop(self, replica: Hashable) -> None:
        """Forget a replica that died or left: its cache went with it."""
        for h in [h for h, owners in self._owners.items() if replica in owners]:
            owners = self._owners[h]
            owners.discard(replica)
            if not owners:
                del self._owners[h]
