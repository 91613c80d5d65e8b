"""The shapes of names and ids, as regular expressions for the OpenAPI document.

Built from the core's own patterns, so that the document states exactly what the core
accepts; the core still checks every value, with its own messages."""

from __future__ import annotations

from pipeline.core.introspection import DEFAULT_SCOPE
from pipeline.core.model import LIMIT_KEY_PART_PATTERN, NAME_PATTERN, SCOPE_PATTERN

_SCOPE = SCOPE_PATTERN.pattern
_KEY = LIMIT_KEY_PART_PATTERN.pattern

NAME = f"^{NAME_PATTERN.pattern}$"
SCOPE = f"^{_SCOPE}$"
SCOPE_ADDRESS = f"^({DEFAULT_SCOPE}|{_SCOPE})$"
LIMIT_KEY = f"^{_KEY}(/{_KEY})?$"
RULE_PATTERN = rf"^(\*|{_SCOPE}(/(\*|{_KEY}(/(\*|{_KEY}))?))?)$"
# Ids are free text, but never hold a control character (the guard answers 400).
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
CURSOR = "^([0-9a-f]{2})+$"


def documented(pattern: str) -> dict[str, object]:
    """`json_schema_extra` that states a pattern the core enforces."""
    return {"pattern": pattern}
