"""Old module paths of meta_train that still work for one release: each forwards to where its names moved."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Sequence


def forwarding_getattr(old: str, new: Sequence[str]) -> Callable[[str], Any]:
    """Returns a module `__getattr__` for the old module `old` that finds each name in the modules `new`, in order,
    with a DeprecationWarning naming where it lives now."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for target in new:
            module = importlib.import_module(target)
            if hasattr(module, name):
                warnings.warn(f"{old}.{name} moved to {target}.{name}; the old path goes in the next release",
                              DeprecationWarning, stacklevel=2)
                return getattr(module, name)
        raise AttributeError(f"module {old!r} (moved to {', '.join(new)}) has no attribute {name!r}")

    return __getattr__
