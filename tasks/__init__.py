"""Tasks and task families for meta-training learned optimizers: losses, data and a registry."""

from tasks.base import SPLITS, Task, TaskError, TaskFamily, check_split, single_task_family
from tasks.datasets import ArrayDataset, load_dataset
from tasks.registry import accepts_argument, get, register, registered_names
from tasks.text_data import TextDataset, load_text
from tasks.validation import ValidationReport, validate
from tasks.logistic_regression import LogisticRegressionFamily
from tasks.mlp_image import MLPImageFamily
from tasks.quadratic import QuadraticFamily
from tasks.l2l_quadratic import L2LQuadraticFamily
from tasks.cnn_image import CNNImageFamily
from tasks.transformer_lm import TransformerLMFamily
from tasks.few_shot import FewShotFamily
from tasks.finance import FinanceFamily
from tasks.finance_daily import DailyRefitFamily
from tasks.robust_regression import RobustRegressionFamily
from tasks.gaussian_mixture_mlp import GaussianMixtureMLPFamily
from tasks.reparameterize import ReparameterizedFamily, reparameterize
from tasks.flax_task import FlaxFamily, from_flax

__all__ = [
    "SPLITS",
    "ArrayDataset",
    "CNNImageFamily",
    "DailyRefitFamily",
    "FewShotFamily",
    "FinanceFamily",
    "FlaxFamily",
    "GaussianMixtureMLPFamily",
    "L2LQuadraticFamily",
    "LogisticRegressionFamily",
    "MLPImageFamily",
    "QuadraticFamily",
    "ReparameterizedFamily",
    "RobustRegressionFamily",
    "Task",
    "TaskError",
    "TaskFamily",
    "TextDataset",
    "TransformerLMFamily",
    "ValidationReport",
    "accepts_argument",
    "check_split",
    "from_flax",
    "get",
    "load_dataset",
    "load_text",
    "register",
    "registered_names",
    "reparameterize",
    "single_task_family",
    "validate",
]
