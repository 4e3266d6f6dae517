"""`path is llm_endpoints.core.llm_path_under(roots)`: whether an absolute path is one of `roots` or inside one of
them, by path components (/opt/llm-stack-2 is not under /opt/llm-stack), without touching any file system."""
from __future__ import annotations

import posixpath


def is_path_under(path: object, roots: object) -> bool:
    if not isinstance(roots, (list, tuple)):
        roots = [roots]
    here = posixpath.normpath(str(path))
    for root in roots:
        base = posixpath.normpath(str(root))
        if here == base or here.startswith(base.rstrip("/") + "/"):
            return True
    return False


class TestModule:
    def tests(self) -> dict:
        return {"llm_path_under": is_path_under}
