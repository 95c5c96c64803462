"""Restricted API groups as plain data: Triton's group names, the parsing of
--http-restricted-api / --grpc-restricted-protocol values, and the constant-time
comparison of a given header value (enforced in llmserve.frontends.restricted)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

# Triton's groups (RESTRICTED_CATEGORY_NAMES), plus "openai": the OpenAI routes, a
# group of their own since Triton serves them from a separate frontend.
TRITON_GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config",
                 "model-repository", "statistics", "trace", "logging")
HTTP_GROUPS = (*TRITON_GROUPS, "openai")
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton's kRestrictedProtocolHeaderTemplate

# group -> (header, value); a group absent is unrestricted
Restrictions = dict[str, tuple[str, str]]


def parse_restriction(text: str, groups: Iterable[str], what: str,
                      restrictions: Restrictions, header_prefix: str = "") -> None:
    """Add one '<group>[,<group>...]:<header>=<value>' flag value to restrictions
    (ValueError with Triton's wording for a bad format, an unknown group, or a group
    named by two flags). Header names are compared case-insensitively."""
    groups = tuple(groups)
    names, colon, setting = text.partition(":")
    header, eq, value = setting.partition("=")
    if not colon or not eq or not names or not header or not value:
        raise ValueError(f"option format is '<{what}s>:<header>=<value>'. Got {text}")
    for name in (n.strip() for n in names.split(",")):
        if name not in groups:
            raise ValueError(f"unknown restricted {what} '{name}' (known: {', '.join(groups)})")
        if name in restrictions:
            raise ValueError(f"restricted {what} '{name}' can not be specified in multiple "
                             "config groups")
        restrictions[name] = ((header_prefix + header).lower(), value)


def value_matches(given: str | bytes | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal the expected value."""
    if given is None:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected.encode("utf-8"))
