"""`x is llm_endpoints.core.llm_endpoint_url`: whether x is an http(s) URL the check modules may call:
http(s)://<host>[:<port 1-65535>][/<path>], the host a name of letters, digits, dots and dashes or an IPv6 address
in brackets, no spaces, line breaks or control characters anywhere (it reaches request lines and headers)."""
from __future__ import annotations

import re

_URL = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:([0-9]{1,5}))?"
                   r"([/?#][!-~]*)?\Z")


def is_endpoint_url(value: object) -> bool:
    found = _URL.match(str(value))
    return bool(found) and (found.group(4) is None or 1 <= int(found.group(4)) <= 65535)


class TestModule:
    def tests(self) -> dict:
        return {"llm_endpoint_url": is_endpoint_url}
