"""The quadratic family of L2L (Andrychowicz et al. 2016): f(x) = ||W x - y||^2 with W and y standard normal.

Each task draws W (dim x dim) and y (dim) from N(0, 1); parameters start at N(0, init_scale^2)
(0.01, close to the origin). Normaliser: loss / E_init[loss] = loss / (||y||^2 +
init_scale^2 ||W||_F^2), about 1 at initialisation and 0 at the optimum W^-1 y.
"""

from __future__ import annotations

from typing import Any, Dict

import chex
import jax
import jax.numpy as jnp

from tasks.base import Array, Task, TaskError, TaskFamily
from tasks.registry import register


class L2LQuadraticTask(Task):
    """One quadratic ||W x - y||^2 with params {'x': [dim]}."""

    name = "l2l_quadratic"

    def __init__(self, matrix: Array, target: Array, init_scale: float):
        self.matrix, self.target, self.init_scale = matrix, target, init_scale
        self.dim = target.shape[-1]

    def init(self, key: Array) -> Dict[str, Array]:
        """Returns {'x': N(0, init_scale^2) starting point}."""
        return {"x": self.init_scale * jax.random.normal(key, (self.dim,), jnp.float32)}

    def loss(self, params: Dict[str, Array], key: Array, batch: Any = None) -> Array:
        """Returns ||W x - y||^2."""
        del key, batch
        chex.assert_shape(params["x"], (self.dim,))
        return jnp.sum(jnp.square(self.matrix @ params["x"] - self.target)).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / (||y||^2 + init_scale^2 ||W||_F^2), the mean loss at initialisation."""
        expected = jnp.sum(jnp.square(self.target)) + self.init_scale**2 * jnp.sum(jnp.square(self.matrix))
        return loss / expected


@register("l2l_quadratic")
class L2LQuadraticFamily(TaskFamily):
    """Random quadratics ||W x - y||^2 of dimension `dim` (L2L's 10-d quadratic experiment by default)."""

    name = "l2l_quadratic"
    data_fields = ()  # no data: every task is generated from its cfg

    def __init__(self, dim: int = 10, init_scale: float = 0.01):
        if int(dim) < 1 or not init_scale >= 0:
            raise TaskError(f"l2l_quadratic needs dim >= 1 and init_scale >= 0, got {dim}, {init_scale}")
        self.dim, self.init_scale = int(dim), float(init_scale)

    def sample(self, key: Array) -> Dict[str, Array]:
        """Draws W and y from N(0, 1)."""
        draws = jax.random.normal(key, (self.dim * self.dim + self.dim,), jnp.float32)
        return {"matrix": draws[: self.dim * self.dim].reshape(self.dim, self.dim), "target": draws[self.dim * self.dim:]}

    def task(self, cfg: Dict[str, Array]) -> L2LQuadraticTask:
        """Builds the quadratic described by `cfg` (works with traced leaves)."""
        chex.assert_shape(cfg["matrix"], (self.dim, self.dim))
        return L2LQuadraticTask(cfg["matrix"], cfg["target"], self.init_scale)
