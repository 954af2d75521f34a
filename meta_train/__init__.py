"""meta_train: truncated unrolls, gradient estimators and the outer loop that meta-trains learned optimizers."""

from meta_train.estimator import Estimator
from meta_train.evosax_adapter import EvosaxEstimator
from meta_train.full_horizon_es import FullHorizonES
from meta_train.parallel import TaskParallelism
from meta_train.truncated_backprop import TruncatedBackprop
from meta_train.truncated_es import TruncatedES
from meta_train.horizons import ConstantHorizon, Horizon, LogUniformHorizon
from meta_train.pes import PES, PESState
from meta_train.policy_gradient import PolicyGradient, PolicyGradientState
from meta_train.registry import register_estimator, register_horizon, register_meta_lr_schedule
from meta_train.trainer import Trainer, TrainerState
from meta_train.unroll import TaskState, TruncatedUnroll

__all__ = [
    "ConstantHorizon", "Estimator", "EvosaxEstimator", "FullHorizonES", "TaskParallelism", "TruncatedBackprop",
    "TruncatedES", "Horizon", "LogUniformHorizon", "PES", "PESState", "PolicyGradient", "PolicyGradientState",
    "TaskState", "Trainer", "TrainerState", "TruncatedUnroll", "register_estimator", "register_horizon",
    "register_meta_lr_schedule",
]
