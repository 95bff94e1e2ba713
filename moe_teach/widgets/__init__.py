"""Interactive explorers (ipywidgets).

Each explorer is built by one function returning an ``ipywidgets`` container whose state
and computation live in plain Python, so tests drive it without a browser: set a child
widget's ``.value``, ``.click()`` a button, then read ``.state`` and the HTML it shows.
"""

from __future__ import annotations

import importlib

_EXPLORERS = {
    "routing_explorer": "moe_teach.widgets.routing",
    "capacity_explorer": "moe_teach.widgets.capacity",
    "balance_explorer": "moe_teach.widgets.balance",
    "routing_dashboard": "moe_teach.widgets.dashboard",
}


def __getattr__(name: str):
    if name in _EXPLORERS:
        return getattr(importlib.import_module(_EXPLORERS[name]), name)
    raise AttributeError(f"module 'moe_teach.widgets' has no attribute {name!r}")


__all__ = list(_EXPLORERS)
