"""Tasks and task families for meta-training learned optimizers: losses, data and a registry."""

from tasks.base import SPLITS, Task, TaskError, TaskFamily, check_split, single_task_family
from tasks.datasets import ArrayDataset, load_dataset
from tasks.registry import accepts_argument, get, register, registered_names
from tasks.logistic_regression import LogisticRegressionFamily
from tasks.mlp_image import MLPImageFamily
from tasks.quadratic import QuadraticFamily
from tasks.l2l_quadratic import L2LQuadraticFamily

__all__ = [
    "SPLITS",
    "ArrayDataset",
    "L2LQuadraticFamily",
    "LogisticRegressionFamily",
    "MLPImageFamily",
    "QuadraticFamily",
    "Task",
    "TaskError",
    "TaskFamily",
    "accepts_argument",
    "check_split",
    "get",
    "load_dataset",
    "register",
    "registered_names",
    "single_task_family",
]
