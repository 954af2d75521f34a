"""Small deterministic task families and learned optimizers that tests build meta-training runs from, and a
`lopt-evaluate` runner."""

from __future__ import annotations

from typing import List, Tuple

import jax
import jax.numpy as jnp
import optax
import pytest

from lopt.base import LearnedOptimizer
from meta_train.evaluation.cli import main as evaluation_main
from tasks.base import Task, TaskFamily


class FixedQuadraticTask(Task):
    """0.5 * sum(scales * x^2) from a fixed start: no data, no randomness."""

    name = "fixed_quadratic"

    def __init__(self, scales):
        self.scales = scales

    def init(self, key):
        del key
        return {"x": jnp.linspace(-1.0, 1.0, self.scales.shape[0]), "y": jnp.ones((2, 2))}

    def loss(self, params, key, batch):
        del key, batch
        return 0.5 * jnp.sum(self.scales * params["x"] ** 2) + 0.25 * jnp.sum(params["y"] ** 2)

    def normalizer(self, loss):
        return loss


class FixedQuadraticFamily(TaskFamily):
    """A family whose every sample is the same quadratic, so every task's trajectory is identical."""

    name = "fixed_quadratic"
    data_fields = ("scales",)

    def __init__(self, dim: int = 4):
        self.scales = jnp.logspace(-1.0, 0.5, dim)

    def sample(self, key):
        del key
        return {"unused": jnp.zeros((), jnp.float32)}

    def task(self, cfg):
        return FixedQuadraticTask(self.scales)


class MomentumLOpt(LearnedOptimizer):
    """Momentum SGD with learnable log learning rate and momentum logit: two meta-parameters."""

    name = "_test_momentum"

    def __init__(self, learning_rate: float = 0.1, momentum: float = 0.5):
        self.learning_rate, self.momentum = learning_rate, momentum

    def init(self, key):
        del key
        return {
            "log_lr": jnp.log(jnp.asarray(self.learning_rate, jnp.float32)),
            "momentum_logit": jnp.log(jnp.asarray(self.momentum / (1 - self.momentum), jnp.float32)),
        }

    def transformation(self, meta_params, *, num_steps=None):
        del num_steps
        lr = jnp.exp(meta_params["log_lr"])
        beta = jax.nn.sigmoid(meta_params["momentum_logit"])
        return optax.with_extra_args_support(optax.sgd(lr, momentum=beta))


class TwoPhaseMomentumLOpt(MomentumLOpt):
    """MomentumLOpt whose learning rate and momentum are meta-trained in separate phases."""

    name = "_test_two_phase_momentum"

    def trainable_mask(self, meta_params, phase="all"):
        if phase == "all":
            return jax.tree.map(lambda _: True, meta_params)
        if phase not in ("lr", "momentum"):
            raise ValueError(f"no phase {phase!r}; phases: all, lr, momentum")
        return {"log_lr": phase == "lr", "momentum_logit": phase == "momentum"}


def evaluate_cli(argv: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    """Runs `lopt-evaluate argv --no-progress` in-process and returns (exit code, stdout, stderr)."""
    code = evaluation_main(argv + ["--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
