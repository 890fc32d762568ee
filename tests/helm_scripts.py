"""helm/'s scripts, imported by their path: the dashboard's generator (helm/dashboard.py) and its
drawer (helm/dashboard_png.py) live beside the chart, outside the `quiver` package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HELM = Path(__file__).resolve().parent.parent / "helm"


def load(name: str) -> ModuleType:
    """helm/NAME.py as the module `quiver_helm_NAME` (loaded once)."""
    module_name = f"quiver_helm_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, HELM / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
