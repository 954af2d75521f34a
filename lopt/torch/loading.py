"""`lopt.torch.load`: an export file or shipped optimizer name in, a `torch.optim.Optimizer` out.

The file is read by lopt.export_format (header JSON, raw little-endian arrays, SHA-256), which
imports no JAX; nothing here runs JAX.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple, Type, Union

from lopt import export_format
from lopt.torch import celo2, small_fc_lopt
from lopt.torch.base import LearnedRuleOptimizer

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
SUFFIX = ".lopt"

# Export name -> (PyTorch optimizer class, config -> (architecture arguments, default group settings)).
# export_format.read maps legacy names (small_fc_lopt's "mlp") to these.
ARCHITECTURES: Dict[str, Tuple[Type[LearnedRuleOptimizer], Callable[[Mapping[str, Any]], Tuple[dict, dict]]]] = {
    "small_fc_lopt": (small_fc_lopt.SmallFCLOpt, small_fc_lopt.settings_from_config),
    "celo2": (celo2.Celo2, celo2.settings_from_config),
}


class UnsupportedArchitectureError(export_format.ExportError):
    """The export file holds a learned optimizer that lopt.torch has no PyTorch implementation of."""


def resolve(source: Union[str, "os.PathLike[str]"]) -> Path:
    """Returns the export file `source` names: an existing path, else a shipped optimizer's name
    (`lopt/pretrained/NAME.lopt`); raises a one-line ExportError listing the shipped names if it is neither."""
    path = Path(source)
    if path.is_file():
        return path
    shipped = PRETRAINED_DIR / f"{os.fspath(source)}{SUFFIX}"
    if os.sep not in os.fspath(source) and shipped.is_file():
        return shipped
    names = sorted(p.name[:-len(SUFFIX)] for p in PRETRAINED_DIR.glob(f"*{SUFFIX}"))
    raise export_format.ExportError(f"{os.fspath(source)}: no such export file or shipped optimizer "
                                    f"(shipped: {', '.join(names) or 'none'})")


def load(source: Union[str, "os.PathLike[str]"], params: Iterable[Any], **settings: Any) -> LearnedRuleOptimizer:
    """Returns the learned optimizer in export file (or shipped optimizer) `source` as a `torch.optim.Optimizer`
    over `params` (parameters, `model.named_parameters()` or parameter groups).

    `settings` are the optimizer's parameter-group defaults (e.g. `lr`, `weight_decay`, `layout`,
    `num_steps`); they override those stored in the file. The meta-parameters and the
    architecture come from the file.
    """
    path = resolve(source)
    exported = export_format.read(path)
    if exported.name not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{path}: lopt.torch has no PyTorch version of the {exported.name!r} learned optimizer "
            f"(supported: {', '.join(ARCHITECTURES)})")
    optimizer_class, split_config = ARCHITECTURES[exported.name]
    try:
        architecture, group_defaults = split_config(exported.config)
    except ValueError as error:
        raise export_format.ExportError(f"{path}: {error}") from None
    accepted = group_settings(optimizer_class)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"{optimizer_class.architecture} has no setting {', '.join(map(repr, unknown))}; "
                         f"settings: {', '.join(accepted)}")
    return optimizer_class(params, exported.meta_params, **architecture, **{**group_defaults, **settings})


def group_settings(optimizer_class: Type[LearnedRuleOptimizer]) -> Tuple[str, ...]:
    """Returns the names of the parameter-group settings an optimizer class takes (its keyword arguments that
    do not fix the architecture)."""
    signature = inspect.signature(optimizer_class.__init__)
    return tuple(name for name, parameter in signature.parameters.items()
                 if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in optimizer_class.architecture_keys)


__all__ = ["ARCHITECTURES", "PRETRAINED_DIR", "UnsupportedArchitectureError", "group_settings", "load", "resolve"]
