"""Credentials out of anything shown: an address's user:password, and secret-looking query values."""

from __future__ import annotations

import re

# Every repetition before a fixed part is bounded, so a 10 MB value costs linear time, never a
# backtracking search from each of its characters.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/@\s]*@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&\s]{0,64}?(?:token|key|secret|password|passwd|signature|credential|auth)[^=&\s]{0,64}=)[^&\s#]*", re.I
)


def redacted(text: str) -> str:
    """`text` with `scheme://user:password@` and `?token=...`-like values replaced by `***`."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)
