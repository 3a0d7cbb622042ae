"""One rule for the names that become folders under the storage root, and for relative paths.

A name (a registry model, a version) is one path segment: letters, digits, `.`, `_`, `-`, starting
with a letter or digit, at most 128 characters. A relative path is segments joined by `/`, none of
them empty, `.` or `..`, and no control characters or backslashes. Anything else is refused with
the field named, so nothing user-given can leave the folder it is joined to.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BAD_SEGMENT_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_name(value: object, field: str = "name") -> str:
    """`value` if it is a plain folder name, else ValueError naming `field`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value.strip(".") == "":
        raise ValueError(
            f"{field} must be a plain folder name (letters, digits, '.', '_', '-'; starting with a letter "
            f"or digit; at most 128 characters), got {value!r}"
        )
    return value


def check_relative_path(value: object, field: str = "path") -> str:
    """`value` if it is a relative path that stays inside its folder, else ValueError naming `field`."""
    if not isinstance(value, str) or not value or value.startswith("/") or "://" in value:
        raise ValueError(f"{field} must be a relative path inside its folder, got {value!r}")
    for segment in value.split("/"):
        if segment in ("", ".", "..") or _BAD_SEGMENT_CHARS.search(segment):
            raise ValueError(f"{field} must be a relative path inside its folder, got {value!r}")
    return value
