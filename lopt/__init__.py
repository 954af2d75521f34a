"""lopt: learned optimizers as optax transformations, and the file format for trained ones."""

import warnings as _warnings

from lopt import features
from lopt import normalization
from lopt.adafac_mlp import AdafacMLPLOpt, AdafacMLPState
from lopt.adafac_mlp_lo import AdafacMLPLO, AdafacMLPLOState
from lopt.attention_lopt import AttentionLOpt, AttentionState
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, get, register, registered_names
from lopt.celo import Celo, CeloState
from lopt.celo2 import Celo2, Celo2RuleState
from lopt.celo_lo import CeloLO, CeloLOState
from lopt.conv_lopt import ConvLOpt, ConvLOptState
from lopt.export import ExportError, LoadedOptimizer, load, save
from lopt import feature_sets
from lopt import update_arguments
from lopt.feature_lopt import FeatureLOpt, FeatureLOptState
from lopt.hand_designed import (SGD, Adam, AdamCosine, AdamW, AdamWCosine, HandDesigned, Muon, RMSProp,
                                 ScheduleFreeAdamW, SGDMomentum)
from lopt.hyper_lstm import HyperLSTM, HyperLSTMState
from lopt.l2l_lstm import L2LLSTM, L2LState
from lopt.learned_adam import AdamMultiplier, LearnedAdam, LearnedAdamState
from lopt.li_malik_policy import LiMalikPolicy, LiMalikState
from lopt.small_fc_lopt import SmallFcLOpt, SmallFcLOptState
from lopt import pretrained
from lopt import published
from lopt.published import PublishedCheckpointError, import_learned_optimization

__all__ = [
    "Adam", "AdamMultiplier", "AdamW", "AdafacMLPLOpt", "AdafacMLPState", "AttentionLOpt", "AttentionState",
    "AdamCosine", "AdamWCosine", "Muon", "ScheduleFreeAdamW",
    "Celo", "Celo2", "FeatureLOpt", "FeatureLOptState", "feature_sets", "update_arguments", "Celo2RuleState", "CeloState", "ConvLOpt", "ConvLOptState", "ExportError", "HandDesigned", "HyperLSTM", "HyperLSTMState",
    "L2LLSTM", "L2LState",
    "LearnedAdam", "LearnedAdamState", "LiMalikPolicy", "LiMalikState", "LearnedOptimizer", "LearnedOptimizerError", "LoadedOptimizer",
    "MetaParams", "SmallFcLOpt", "SmallFcLOptState", "normalization", "RMSProp", "SGD", "SGDMomentum", "features", "get", "load", "register",
    "pretrained", "registered_names", "save",
    "AdafacMLPLO", "AdafacMLPLOState", "CeloLO", "CeloLOState", "PublishedCheckpointError", "import_learned_optimization",
    "published",
]

# Public names replaced by another, still importable for one release.
_DEPRECATED_NAMES = {"MLPLOpt": "SmallFcLOpt", "MLPLOptState": "SmallFcLOptState"}


def __getattr__(name: str):
    """Returns a deprecated public name's replacement, with a DeprecationWarning."""
    if name in _DEPRECATED_NAMES:
        _warnings.warn(f"lopt.{name} is deprecated; use lopt.{_DEPRECATED_NAMES[name]}", DeprecationWarning,
                       stacklevel=2)
        return globals()[_DEPRECATED_NAMES[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
