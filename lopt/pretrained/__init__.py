"""Learned optimizers meta-trained by this framework and shipped with the package.

Each is an export file beside this module (`NAME.lopt`): the optimizer's name and
constructor arguments, its meta-parameters, and provenance (the meta-training config,
meta-steps, date, versions and benchmark figures).

    import lopt.pretrained
    tx = lopt.pretrained.load("small_fc_lopt_digits8").transformation(num_steps=200)
"""

from __future__ import annotations

import importlib.resources
try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable
from typing import Any, Dict, List

from lopt import export

SUFFIX = ".lopt"


class PretrainedError(export.ExportError):
    """No shipped optimizer has the requested name."""


def available() -> List[str]:
    """Returns the names of the shipped optimizers, sorted."""
    folder = importlib.resources.files(__name__)
    return sorted(entry.name[: -len(SUFFIX)] for entry in folder.iterdir() if entry.name.endswith(SUFFIX))


list = available  # noqa: A001 - `lopt.pretrained.list()` reads naturally


def resource(name: str) -> Traversable:
    """Returns the packaged file of the shipped optimizer `name`; PretrainedError listing the names if there is none."""
    names = available()
    if name not in names:
        raise PretrainedError(f"no pretrained optimizer {name!r}; available: {', '.join(names) or 'none'}")
    return importlib.resources.files(__name__) / f"{name}{SUFFIX}"


def load(name: str, **config_overrides: Any) -> export.LoadedOptimizer:
    """Returns the shipped optimizer `name`, ready to use: `.transformation()` is an optax transformation.

    `config_overrides` replace stored constructor arguments (see `lopt.export.load`).
    """
    with importlib.resources.as_file(resource(name)) as local:
        return export.load(local, **config_overrides)


def info(name: str) -> Dict[str, Any]:
    """Returns the optimizer name, constructor arguments and provenance of the shipped optimizer `name`."""
    with importlib.resources.as_file(resource(name)) as local:
        exported = export.read(local)
    return {"name": name, "optimizer": exported.name, "config": exported.config, "provenance": exported.provenance}


__all__ = ["PretrainedError", "available", "info", "list", "load", "resource"]
