"""Example task family: small MLPs regressing scikit-learn's diabetes progression score."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_diabetes

import tasks


class DiabetesMLPTask(tasks.Task):
    """One regression problem: a tanh MLP with a sampled init scale and L2 penalty."""

    def __init__(self, family: "DiabetesMLPFamily", cfg: dict):
        self.family, self.cfg = family, cfg

    def init(self, key: jax.Array) -> dict:
        """Returns first-layer weights ~ N(0, init_scale^2 / fan_in), output weights ~ N(0, 1 / fan_in)."""
        d, h = self.family.x["train"].shape[1], self.family.hidden
        w1, w2 = jnp.split(jax.random.normal(key, (d * h + h,)), [d * h])
        return {"w1": w1.reshape(d, h) * self.cfg["init_scale"] / d**0.5, "b1": jnp.zeros(h),
                "w2": w2 / h**0.5, "b2": jnp.zeros(())}

    def sample_batch(self, key: jax.Array, split: str) -> tuple:
        """Draws (x [batch, 10], y [batch]) from `split` inside jit."""
        x, y = self.family.x[tasks.check_split(split)], self.family.y[split]
        rows = jax.random.randint(key, (self.family.batch_size,), 0, x.shape[0])
        return x[rows], y[rows]

    def loss(self, params: dict, key: jax.Array, batch: tuple) -> jax.Array:
        """Returns mean squared error plus the task's L2 penalty (float32)."""
        x, y = batch
        chex.assert_rank(x, 2)
        pred = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        penalty = self.cfg["l2"] * (jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2))
        return (jnp.mean((pred - y) ** 2) + penalty).astype(jnp.float32)


@tasks.register("diabetes_mlp")
class DiabetesMLPFamily(tasks.TaskFamily):
    """MLPs of static width on the diabetes table; init scale and L2 penalty vary per task."""
    data_fields = ("x", "y")  # the pytree leaves, passed into jit; every other attribute is static

    def __init__(self, hidden: int = 16, batch_size: int = 32):
        x, y = load_diabetes(return_X_y=True)
        parts = np.split(np.random.default_rng(0).permutation(len(y)), [310, 376])
        x, y = (x - x[parts[0]].mean(0)) / x[parts[0]].std(0), (y - y[parts[0]].mean()) / y[parts[0]].std()
        self.x, self.y = ({s: jnp.asarray(a[p], jnp.float32) for s, p in zip(tasks.SPLITS, parts)} for a in (x, y))
        self.hidden, self.batch_size = hidden, batch_size

    def sample(self, key: jax.Array) -> dict:
        """Samples a log-uniform init scale in [0.3, 3] and L2 penalty in [1e-5, 1e-2]."""
        u = jax.random.uniform(key, (2,))
        return {"init_scale": 0.3 * 10.0 ** u[0], "l2": 1e-5 * 10.0 ** (3 * u[1])}

    def task(self, cfg: dict) -> DiabetesMLPTask:
        """Builds the task described by `cfg` (its leaves may be tracers)."""
        return DiabetesMLPTask(self, cfg)
