"""E-mail addresses and public IP addresses replaced by placeholders, as datatrove 0.10.1's `PIIFormatter`.

The same patterns and placeholders as datatrove. One difference on purpose: datatrove cycles through
its placeholders across every document a process sees, so the text it writes depends on how the
documents were spread over workers; here the cycle restarts with each document, so a document's
text depends on that document alone (outputs stay byte-identical at any worker count).
"""

from __future__ import annotations

import ipaddress
import re

_EMAIL = re.compile(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:(?:[A-Za-z0-9](?:["
    r"A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?|\[(?:(?:25[0-5]|2[0-4][0-9]|["
    r"01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)])"
)
_DIGIT_DOT_DIGIT = re.compile(r"\d\.\d")  # no IP address without one: most documents skip the IP pattern
_IP = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)")
# example.com/org are reserved for examples; the addresses are datatrove's (unassigned when it chose them)
EMAIL_REPLACEMENTS = ("email@example.com", "firstname.lastname@example.org")
IP_REPLACEMENTS = ("22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11", "18.104.22.168")


def _is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def format_pii(text: str) -> tuple[str, int]:
    """(the text with e-mail and public IP addresses replaced, how many were replaced)."""
    if "@" not in text and "." not in text:
        return text, 0
    count = 0

    def email(match: re.Match) -> str:
        nonlocal count
        count += 1
        return EMAIL_REPLACEMENTS[(count - 1) % len(EMAIL_REPLACEMENTS)]

    text = _EMAIL.sub(email, text) if "@" in text else text
    ips = 0

    def ip(match: re.Match) -> str:
        nonlocal ips
        if not _is_public(match.group(0)):
            return match.group(0)
        ips += 1
        return IP_REPLACEMENTS[(ips - 1) % len(IP_REPLACEMENTS)]

    if _DIGIT_DOT_DIGIT.search(text):
        text = _IP.sub(ip, text)
    return text, count + ips
