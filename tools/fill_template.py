#!/usr/bin/env python3
"""Fill ${name} placeholders of a config.pbtxt template (tensorrtllm_backend's CLI).

    python3 tools/fill_template.py [-i|--in_place] FILE "k1:v1,k2:v2"

Each substitution is KEY:VALUE, the key ending at the first unescaped colon, so values may
hold colons (URLs, C: paths). `\\,` is a comma and `\\:` a colon inside a key or value,
`\\\\` a backslash. A key that is not a placeholder of FILE is an error and FILE is left
untouched. Placeholders not named stay as they are, except max_queue_size and
max_queue_delay_microseconds, which default to 0. Without -i the result goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from string import Template

DEFAULTS = {"max_queue_size": "0", "max_queue_delay_microseconds": "0"}
_ESCAPABLE = {",", ":", "\\"}


class FillError(Exception):
    pass


def split_escaped(text: str, delimiter: str, maxsplit: int = -1) -> list[str]:
    """Split on unescaped `delimiter`. Escapes of ',', ':' and '\\' are resolved in the
    pieces; any other backslash stays as written (Windows paths survive)."""
    pieces, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            current.append("\\" + text[i + 1])  # resolved later by unescape()
            i += 2
            continue
        if char == delimiter and (maxsplit < 0 or len(pieces) < maxsplit):
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    pieces.append("".join(current))
    return pieces


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_substitutions(spec: str) -> dict[str, str]:
    """'k1:v1,k2:v2' -> {k1: v1, k2: v2}; empty entries (a trailing comma) are skipped."""
    result: dict[str, str] = {}
    for entry in split_escaped(spec, ","):
        if not entry.strip():
            continue
        parts = split_escaped(entry, ":", maxsplit=1)
        if len(parts) != 2:
            raise FillError(f"substitution '{unescape(entry)}' is not KEY:VALUE")
        key, value = unescape(parts[0]).strip(), unescape(parts[1])
        if not key:
            raise FillError(f"substitution '{unescape(entry)}' has an empty key")
        result[key] = value
    return result


def placeholders(text: str) -> set[str]:
    """Names used as $name or ${name} in `text`."""
    names = set()
    for match in Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def fill(text: str, substitutions: dict[str, str], source: str = "the file") -> str:
    known = placeholders(text)
    for key in substitutions:
        if key not in known:
            raise FillError(f"key '{key}' does not exist in the file {source}.")
    return Template(text).safe_substitute({**DEFAULTS, **substitutions})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fill ${name} placeholders of a config.pbtxt.")
    parser.add_argument("file_path", help="path of the .pbtxt to modify")
    parser.add_argument("substitutions", nargs="+",
                        help="substitutions: variable_name_1:value_1,variable_name_2:value_2")
    parser.add_argument("--in_place", "-i", action="store_true",
                        help="do the operation in-place")
    args = parser.parse_args(argv)
    path = Path(args.file_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        print(f"fill_template.py: error: {path}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        subs: dict[str, str] = {}
        for spec in args.substitutions:
            subs.update(parse_substitutions(spec))
        result = fill(text, subs, str(path))
    except FillError as e:
        print(f"fill_template.py: error: {e}", file=sys.stderr)
        return 1
    if args.in_place:
        path.write_text(result, encoding="utf-8")
    else:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
