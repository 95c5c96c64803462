"""Tool calls out of generated text, incrementally: the same parser serves streamed
chunks (OpenAI's delta.tool_calls with growing `arguments`) and whole responses, so the
streamed pieces of a call always add up to the non-streamed call.

Formats, picked per chat template (tools.py): Hermes / Qwen (`<tool_call>` JSON
`</tool_call>`), Mistral (`[TOOL_CALLS]` then a JSON array), Llama 3 JSON (the message
is `{"name", "parameters"}` objects, optionally after `<|python_tag|>`), and the guided
forms of tool_choice: a named function (the text is its arguments) and `required` (a
JSON array of {"name", "parameters"}).
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

ARGS_KEYS = ("arguments", "parameters")


@dataclass(slots=True)
class Content:
    text: str


@dataclass(slots=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(slots=True)
class CallArgs:
    index: int
    text: str


Event = Content | CallStart | CallArgs


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class CallScanner:
    """JSON call objects ({"name": ..., "arguments"|"parameters": ...}) in a character
    stream, among separators (whitespace, `,` `;` `[` `]`). Yields a CallStart once a
    call's name is known and the raw text of its arguments value as it arrives."""

    def __init__(self, first_index: int = 0) -> None:
        self.next_index = first_index
        self.depth = 0
        self.complete = 0  # calls whose object closed
        self._new_object()

    def _new_object(self) -> None:
        self.buf = ""
        self.in_str = self.esc = False
        self.str_start = 0
        self.key: str | None = None
        self.awaiting_value = False  # after a depth-1 ':'
        self.value_key: str | None = None
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None
        self.sent = 0
        self.index: int | None = None

    @property
    def open(self) -> bool:
        """Inside a call object that has not closed."""
        return self.depth > 0

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        for c in text:
            if self.depth == 0:
                if c == "{":
                    self._new_object()
                    self.buf, self.depth = "{", 1
                continue
            self.buf += c
            self._step(c, len(self.buf) - 1)
            if self.depth == 0:
                events += self._emit(closing=True)
                self.complete += 1
        if self.depth > 0:
            events += self._emit(closing=False)
        return events

    def _step(self, c: str, i: int) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif c == "\\":
                self.esc = True
            elif c == '"':
                self.in_str = False
                if self.depth == 1:
                    self._string_done(self.buf[self.str_start : i + 1])
            return
        if c.isspace():
            return
        if self.depth == 1 and self.awaiting_value:
            self.awaiting_value = False
            if self.value_key in ARGS_KEYS and self.args_start is None:
                self.args_start = i
        if c == '"':
            self.in_str, self.str_start = True, i
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 1 and self._in_args():
                self.args_end = i + 1
            elif self.depth == 0 and self._in_args() and self.args_end is None:
                self.args_end = len(self.buf[:i].rstrip())
        elif c == ":" and self.depth == 1:
            self.value_key, self.awaiting_value = self.key, True
        elif c == "," and self.depth == 1:
            if self._in_args() and self.args_end is None:
                self.args_end = len(self.buf[:i].rstrip())
            self.key, self.value_key = None, None

    def _in_args(self) -> bool:
        return self.value_key in ARGS_KEYS and self.args_start is not None

    def _string_done(self, literal: str) -> None:
        try:
            value = json.loads(literal)
        except ValueError:
            return
        if self.value_key is None:  # a key
            self.key = value
        elif self.value_key == "name" and self.name is None and isinstance(value, str):
            self.name = value

    def _emit(self, closing: bool) -> list[Event]:
        out: list[Event] = []
        if self.name is None:
            return out
        if self.index is None:
            self.index = self.next_index
            self.next_index += 1
            out.append(CallStart(self.index, new_call_id(), self.name))
        if self.args_start is None:
            if closing:
                out.append(CallArgs(self.index, "{}"))
            return out
        end = self.args_end
        if end is None:
            end = len(self.buf) if self.depth > 1 else len(self.buf.rstrip())
        piece = self.buf[self.args_start + self.sent : end]
        if piece:
            self.sent += len(piece)
            out.append(CallArgs(self.index, piece))
        return out


class ToolParser(ABC):
    """Base: feed() text pieces, finish() at the end; both return Events."""

    def __init__(self) -> None:
        self.scanner = CallScanner()

    @abstractmethod
    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]:
        return []

    @property
    def broken(self) -> bool:
        """A call was begun and never closed (cut off by max_tokens or a stop)."""
        return self.scanner.open


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest tail of text that could be the start of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class TaggedParser(ToolParser):
    """Content, with calls between begin and end markers (Hermes: <tool_call> ...
    </tool_call>); end None: everything after the begin marker is calls (Mistral)."""

    def __init__(self, begin: str, end: str | None) -> None:
        super().__init__()
        self.begin, self.end = begin, end
        self.pending = ""
        self.in_call = False

    def feed(self, text: str) -> list[Event]:
        self.pending += text
        events: list[Event] = []
        while True:
            if not self.in_call:
                at = self.pending.find(self.begin)
                if at < 0:
                    keep = _held_prefix(self.pending, self.begin)
                    cut = len(self.pending) - keep
                    if cut:
                        events.append(Content(self.pending[:cut]))
                    self.pending = self.pending[cut:]
                    return events
                if at:
                    events.append(Content(self.pending[:at]))
                self.pending = self.pending[at + len(self.begin):]
                self.in_call = True
            if self.end is None:
                events += self.scanner.feed(self.pending)
                self.pending = ""
                return events
            at = self.pending.find(self.end)
            if at < 0:
                keep = _held_prefix(self.pending, self.end)
                cut = len(self.pending) - keep
                events += self.scanner.feed(self.pending[:cut])
                self.pending = self.pending[cut:]
                return events
            events += self.scanner.feed(self.pending[:at])
            self.pending = self.pending[at + len(self.end):]
            self.in_call = False

    def finish(self) -> list[Event]:
        rest, self.pending = self.pending, ""
        if not rest:
            return []
        return self.scanner.feed(rest) if self.in_call else [Content(rest)]


class JsonCallsParser(ToolParser):
    """The whole text is call objects (Llama 3 JSON, after an optional <|python_tag|>;
    tool_choice required: a JSON array) unless it starts with something else, in which
    case it is content."""

    PYTHON_TAG = "<|python_tag|>"

    def __init__(self, always_calls: bool = False) -> None:
        super().__init__()
        self.mode: str | None = "calls" if always_calls else None
        self.head = ""

    def feed(self, text: str) -> list[Event]:
        if self.mode is None:
            self.head += text
            probe = self.head.lstrip()
            if probe.startswith(self.PYTHON_TAG):
                probe = probe[len(self.PYTHON_TAG):].lstrip()
                if not probe:
                    return []  # the call follows
            elif not probe or self.PYTHON_TAG.startswith(probe):
                return []  # may still become the tag
            self.mode = "calls" if probe[0] in "{[" else "content"
            text = probe if self.mode == "calls" else self.head
            self.head = ""
        if self.mode == "content":
            return [Content(text)] if text else []
        return self.scanner.feed(text)

    def finish(self) -> list[Event]:
        if self.mode is None and self.head:
            return [Content(self.head)]
        return []


class NamedCallParser(ToolParser):
    """tool_choice naming one function: the (guided) text is its arguments."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.started = False
        self.any_args = False

    def _start(self) -> list[Event]:
        if self.started:
            return []
        self.started = True
        return [CallStart(0, new_call_id(), self.name)]

    def feed(self, text: str) -> list[Event]:
        events = self._start()
        if text:
            self.any_args = True
            events.append(CallArgs(0, text))
        return events

    def finish(self) -> list[Event]:
        events = self._start()
        if not self.any_args:
            events.append(CallArgs(0, "{}"))
        return events

    @property
    def broken(self) -> bool:
        return False


@dataclass(slots=True)
class ParsedCall:
    id: str
    name: str
    arguments: str


def parse_all(parser: ToolParser, text: str) -> tuple[str | None, list[ParsedCall]]:
    """A whole response: (content or None, tool calls)."""
    events = parser.feed(text) + parser.finish()
    return collect(events)


def collect(events: list[Event]) -> tuple[str | None, list[ParsedCall]]:
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: dict[int, ParsedCall] = {}
    for e in events:
        if isinstance(e, CallStart):
            calls[e.index] = ParsedCall(e.id, e.name, "")
        elif isinstance(e, CallArgs):
            calls[e.index].arguments += e.text
    found = [calls[i] for i in sorted(calls)]
    if found:
        return (content.strip() or None), found
    return content, found
