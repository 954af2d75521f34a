"""lopt: learned optimizers as optax transformations, and the file format for trained ones."""

from lopt import features
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, get, register, registered_names
from lopt.hand_designed import SGD, Adam, AdamW, HandDesigned, RMSProp, SGDMomentum
from lopt.mlp_lopt import MLPLOpt, MLPLOptState
from lopt.export import ExportError, LoadedOptimizer, load, save

__all__ = [
    "Adam", "AdamW", "ExportError", "HandDesigned", "LoadedOptimizer", "load", "save", "LearnedOptimizer", "LearnedOptimizerError", "MLPLOpt",
    "MLPLOptState", "MetaParams", "RMSProp", "SGD", "SGDMomentum", "features", "get",
    "register", "registered_names",
]
