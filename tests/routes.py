"""Every route a served Gradio app registers (its own, groco's JSON routes, included
routers), to check each one."""

from __future__ import annotations

import re
from typing import Any


def registered_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of a launched ``gr.Blocks`` (``WEBSOCKET`` for a
    websocket route), into included routers too."""
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)
            elif hasattr(route, "path"):
                for method in sorted(getattr(route, "methods", None) or ["WEBSOCKET"]):
                    found.append((method, route.path))

    walk(app.server_app.routes)
    return found


def filled(path: str) -> str:
    """``path`` with every ``{parameter}`` replaced by ``x``."""
    return re.sub(r"\{[^}]+\}", "x", path)
