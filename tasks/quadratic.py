"""Randomly rotated, ill-conditioned quadratic bowls: 0.5 (x - x*)^T A (x - x*).

A = Q diag(lambda) Q^T with Q a Haar-random rotation (QR of a Gaussian) and eigenvalues
log-spaced from 1 down to 1/condition, so the condition number is exactly `condition`.
The condition number is log-uniform in [min_condition, max_condition] and the optimum x* is
standard normal. Parameters start standard normal.

Normaliser: loss / E_init[loss], where the expectation is over the initialisation for this
task's A and x*, i.e. 0.5 * (trace(A) + x*^T A x*). It is about 1 at initialisation for
every condition number and goes to 0 at the optimum.
"""

from __future__ import annotations

import math
from typing import Any, Dict

import chex
import jax
import jax.numpy as jnp

from tasks.base import Array, Task, TaskError, TaskFamily
from tasks.registry import register

QuadraticConfig = Dict[str, Array]


class QuadraticTask(Task):
    """One quadratic bowl; optional mean-zero gradient noise of scale `grad_noise`."""

    name = "quadratic"

    def __init__(self, rotation: Array, eigenvalues: Array, optimum: Array, grad_noise: float):
        self.rotation = rotation
        self.eigenvalues = eigenvalues
        self.optimum = optimum
        self.grad_noise = grad_noise
        self.dim = eigenvalues.shape[-1]

    def init(self, key: Array) -> Dict[str, Array]:
        """Returns {'x': standard-normal starting point}."""
        return {"x": jax.random.normal(key, (self.dim,), jnp.float32)}

    def loss(self, params: Dict[str, Array], key: Array, batch: Any = None) -> Array:
        """Returns 0.5 (x - x*)^T A (x - x*) plus grad_noise * <z, x> with z ~ N(0, I) from `key`."""
        x = params["x"]
        chex.assert_shape(x, (self.dim,))
        offset_in_eigenbasis = self.rotation.T @ (x - self.optimum)
        value = 0.5 * jnp.sum(self.eigenvalues * jnp.square(offset_in_eigenbasis))
        if self.grad_noise:
            value = value + self.grad_noise * jnp.dot(jax.random.normal(key, (self.dim,), x.dtype), x)
        return value.astype(jnp.float32)

    def expected_initial_loss(self) -> Array:
        """Mean loss over standard-normal initialisations: 0.5 * (trace(A) + x*^T A x*)."""
        optimum_in_eigenbasis = self.rotation.T @ self.optimum
        return 0.5 * (jnp.sum(self.eigenvalues) + jnp.sum(self.eigenvalues * jnp.square(optimum_in_eigenbasis)))

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / expected_initial_loss(): about 1 at initialisation, 0 at the optimum."""
        return loss / self.expected_initial_loss()


@register("quadratic")
class QuadraticFamily(TaskFamily):
    """Quadratics of dimension `dim` with log-uniform condition numbers and random rotations.

    cfg fields: `log_condition` (scalar), `rotation` (dim x dim orthogonal), `optimum` (dim,).
    """

    name = "quadratic"
    data_fields = ()  # no data: every task is generated from its cfg

    def __init__(
        self,
        dim: int = 10,
        min_condition: float = 1.0,
        max_condition: float = 1e4,
        grad_noise: float = 0.0,
    ):
        if int(dim) < 1:
            raise TaskError(f"quadratic dim must be a positive integer, got {dim}")
        if not 1.0 <= min_condition <= max_condition:
            raise TaskError(
                f"quadratic needs 1 <= min_condition <= max_condition, got {min_condition}, {max_condition}"
            )
        if grad_noise < 0:
            raise TaskError(f"quadratic grad_noise must be >= 0, got {grad_noise}")
        self.dim = int(dim)
        self.min_condition = float(min_condition)
        self.max_condition = float(max_condition)
        self.grad_noise = float(grad_noise)

    def sample(self, key: Array) -> QuadraticConfig:
        """Samples a condition number, a Haar-random rotation and an optimum."""
        # One normal draw for everything (one RNG kernel to compile); ndtr maps N(0, 1) onto U(0, 1).
        draws = jax.random.normal(key, (self.dim * self.dim + self.dim + 1,), jnp.float32)
        gaussian = draws[: self.dim * self.dim].reshape(self.dim, self.dim)
        optimum = draws[self.dim * self.dim: -1]
        uniform = jax.scipy.special.ndtr(draws[-1])
        low, high = math.log(self.min_condition), math.log(self.max_condition)
        q, r = jnp.linalg.qr(gaussian)
        rotation = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0)[None, :]
        return {"log_condition": low + uniform * (high - low), "rotation": rotation, "optimum": optimum}

    def task(self, cfg: QuadraticConfig) -> QuadraticTask:
        """Builds the quadratic described by `cfg` (works with traced cfg leaves)."""
        chex.assert_shape(cfg["rotation"], (self.dim, self.dim))
        chex.assert_shape(cfg["optimum"], (self.dim,))
        spread = jnp.linspace(0.0, 1.0, self.dim) if self.dim > 1 else jnp.zeros((1,))
        eigenvalues = jnp.exp(-cfg["log_condition"] * spread).astype(jnp.float32)
        return QuadraticTask(cfg["rotation"], eigenvalues, cfg["optimum"], self.grad_noise)
