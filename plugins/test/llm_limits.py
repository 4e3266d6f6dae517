"""`x is llm_endpoints.core.llm_rate_limit`: whether the backend takes x as a rate limit (module_utils/rate_limits.py
says what that is)."""
from __future__ import annotations

from ansible_collections.llm_endpoints.core.plugins.module_utils.rate_limits import is_rate_limit


class TestModule:
    def tests(self) -> dict:
        return {"llm_rate_limit": is_rate_limit}
