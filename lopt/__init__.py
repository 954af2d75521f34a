"""lopt: learned optimizers as optax transformations, and the file format for trained ones."""

from lopt import features
from lopt.adafac_mlp import AdafacMLPLOpt, AdafacMLPState
from lopt.adafac_mlp_lo import AdafacMLPLO, AdafacMLPLOState
from lopt.attention_lopt import AttentionLOpt, AttentionState
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, get, register, registered_names
from lopt.celo import Celo, CeloState
from lopt.celo2 import Celo2, Celo2RuleState
from lopt.celo_lo import CeloLO, CeloLOState
from lopt.export import ExportError, LoadedOptimizer, load, save
from lopt.hand_designed import (SGD, Adam, AdamCosine, AdamW, AdamWCosine, HandDesigned, Muon, RMSProp,
                                 ScheduleFreeAdamW, SGDMomentum)
from lopt.hyper_lstm import HyperLSTM, HyperLSTMState
from lopt.l2l_lstm import L2LLSTM, L2LState
from lopt.learned_adam import AdamMultiplier, LearnedAdam, LearnedAdamState
from lopt.mlp_lopt import MLPLOpt, MLPLOptState
from lopt import pretrained
from lopt import published
from lopt.published import PublishedCheckpointError, import_learned_optimization

__all__ = [
    "Adam", "AdamMultiplier", "AdamW", "AdafacMLPLOpt", "AdafacMLPState", "AttentionLOpt", "AttentionState",
    "AdamCosine", "AdamWCosine", "Muon", "ScheduleFreeAdamW",
    "Celo", "Celo2", "Celo2RuleState", "CeloState", "ExportError", "HandDesigned", "HyperLSTM", "HyperLSTMState",
    "L2LLSTM", "L2LState",
    "LearnedAdam", "LearnedAdamState", "LearnedOptimizer", "LearnedOptimizerError", "LoadedOptimizer", "MLPLOpt",
    "MLPLOptState", "MetaParams", "RMSProp", "SGD", "SGDMomentum", "features", "get", "load", "register",
    "pretrained", "registered_names", "save",
    "AdafacMLPLO", "AdafacMLPLOState", "CeloLO", "CeloLOState", "PublishedCheckpointError", "import_learned_optimization",
    "published",
]
