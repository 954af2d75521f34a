"""The outer loop: an estimator's meta-gradient applied by an optax meta-optimizer, one jitted call per step."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from meta_train.clipped_losses import ClippedLossWatch
from meta_train.estimator import Estimator
from meta_train.horizons import Horizon
from meta_train.parallel import TaskParallelism
from meta_train.regularizer import KEY_STREAM, MetaRegularizer
from meta_train.unroll import TruncatedUnroll, check_truncation
from tasks.base import TaskFamily

Array = jax.Array


class TrainerState(NamedTuple):
    """Everything a meta-training run needs to continue: a pytree of arrays only (keys as raw uint32 data).

    `regularizer_anchor` holds the run's initial meta-params when the regulariser measures its L2
    penalty from them, else nothing (so states of runs without it keep their leaves).
    """

    meta_params: Any
    meta_opt_state: Any
    estimator_state: Any
    key: Array
    step: Array
    regularizer_anchor: Any = ()


def global_norm(tree: Any) -> Array:
    """Returns the L2 norm of all leaves of `tree` together."""
    return optax.tree.norm(tree)


def place_replicated(tree: Any, sharding: Optional[NamedSharding]) -> Any:
    """Returns `tree` on the default device, or copied whole onto every device of `sharding` (works across hosts)."""
    if sharding is None:
        return jax.device_put(tree)

    def place(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree)


def place_state(state: "TrainerState", parallelism: TaskParallelism, estimator: Estimator) -> "TrainerState":
    """Returns a (restored, host-side) state laid out on the devices the way the trainer's jitted step expects."""
    replicated, by_task = parallelism.replicated_sharding(), parallelism.task_sharding()
    if replicated is None:
        return jax.device_put(state)

    def place(sharding, subtree):
        def one(leaf):
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(one, subtree)

    prefix = TrainerState(replicated, replicated, estimator.sharding_prefix(by_task, replicated), replicated, replicated,
                          replicated)
    return jax.tree.map(place, prefix, state, is_leaf=lambda x: isinstance(x, NamedSharding))


def numbered_labels(names: Sequence[str]) -> List[str]:
    """Returns `names` with repeats numbered (`a`, `a-2`, ...), so every family of a mixture has its own metrics."""
    labels: List[str] = []
    for name in names:
        label, count = str(name), 2
        while label in labels:
            label, count = f"{name}-{count}", count + 1
        labels.append(label)
    return labels


class Trainer:
    """Meta-trains `learned_optimizer` on `family` with `estimator` and `meta_optimizer`.

    `family` may also be a sequence of families: each gets its own batch of `num_tasks`
    tasks (vmapped separately, since shapes differ between families) and its own estimator
    state; the meta-gradient is the mean over families, and the metrics add
    `meta_loss/<label>` per family: `family_labels` (a config's mixture entry names), else the
    families' names with repeats numbered.

    Without `parallelism`, the tasks are spread with shard_map over as many visible devices as
    divide `num_tasks` (one device: no spreading); `meta_train.launch.use_all_cores()`, called
    before JAX starts, makes one device per CPU core.

    A non-finite meta-gradient is not applied (the step still advances the inner runs) and
    is counted in the metrics as `skipped_update`. Normalised losses above `max_meta_loss`
    are clipped to it and counted as `num_clipped`; when more than half of a meta-step's
    losses are clipped, `step` prints a one-line warning (once), since they carry no signal.

    With a `regularizer` (meta_train.regularizer.MetaRegularizer) whose weights are not all zero,
    the gradient of its penalties is added to the estimator's meta-gradient (of each family's
    mean, after accumulation), so every estimator minimises L_meta + lambda * Omega, and the
    metrics add `regularizer` (lambda * Omega) and `regularizer_<penalty>` (each Omega). All
    weights zero computes nothing: the meta-gradients are those of a trainer without it.
    """

    def __init__(
        self,
        family: TaskFamily,
        learned_optimizer: Any,
        estimator: Estimator,
        horizon: Horizon,
        meta_optimizer: Optional[optax.GradientTransformation] = None,
        meta_loss: str = "train",
        max_meta_loss: float = 10.0,
        parallelism: Optional[TaskParallelism] = None,
        accumulate: int = 1,
        family_labels: Optional[Sequence[str]] = None,
        regularizer: Optional[MetaRegularizer] = None,
    ):
        if int(accumulate) < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.accumulate = int(accumulate)
        check_truncation(horizon, estimator.trunc_length)
        self.parallelism = parallelism or TaskParallelism.over_visible_devices(estimator.num_tasks)
        self.parallelism.check_num_tasks(estimator.num_tasks)
        self.mixture = isinstance(family, (list, tuple))
        families = tuple(family) if self.mixture else (family,)
        if not families:
            raise ValueError("a mixture needs at least one task family")
        names = list(family_labels) if family_labels is not None else [getattr(f, "name", type(f).__name__)
                                                                        for f in families]
        if len(names) != len(families):
            raise ValueError(f"family_labels names {len(names)} families, the trainer has {len(families)}")
        self.family_names = numbered_labels(names)
        family = families if self.mixture else family
        self.family = place_replicated(family, self.parallelism.replicated_sharding())
        self.learned_optimizer = learned_optimizer
        self.estimator = estimator
        self.horizon = horizon
        self.meta_optimizer = meta_optimizer if meta_optimizer is not None else optax.adam(1e-3)
        self.meta_loss = meta_loss
        self.max_meta_loss = float(max_meta_loss)
        self.regularizer = regularizer if regularizer is not None else MetaRegularizer()
        self.regularizer.check_optimizer(learned_optimizer)
        TruncatedUnroll(families[0], learned_optimizer, horizon, meta_loss, max_meta_loss)  # validates arguments
        self._phase_masks: Dict[str, Any] = {}
        self.clipped_loss_watch = ClippedLossWatch(
            self.family_names, self.inner_steps_per_meta_step // len(families), self.max_meta_loss
        )
        replicated, by_task = self.parallelism.replicated_sharding(), self.parallelism.task_sharding()
        if replicated is None:
            self._init = jax.jit(self._init_impl)
            self._step = jax.jit(self._step_impl)
        else:
            estimator_sharding = estimator.sharding_prefix(by_task, replicated)
            if self.mixture:
                estimator_sharding = tuple(estimator_sharding for _ in families)
            state_sharding = TrainerState(replicated, replicated, estimator_sharding, replicated, replicated, replicated)
            self._init = jax.jit(self._init_impl, out_shardings=state_sharding)
            self._step = jax.jit(self._step_impl, out_shardings=(state_sharding, replicated))

    def unroll(self, family: TaskFamily) -> TruncatedUnroll:
        """Returns the truncated unroll of this trainer for `family` (possibly a traced pytree)."""
        return TruncatedUnroll(
            family, self.learned_optimizer, self.horizon, self.meta_loss, self.max_meta_loss, self.parallelism
        )

    def _init_impl(self, key_data: Array, family: TaskFamily, meta_params: Any) -> TrainerState:
        key = jax.random.wrap_key_data(key_data)
        estimator_key, next_key = jax.random.split(key)
        if self.mixture:
            keys = jax.random.split(estimator_key, len(family))
            estimator_state = tuple(
                self.estimator.init(self.unroll(f), meta_params, k) for f, k in zip(family, keys)
            )
        else:
            estimator_state = self.estimator.init(self.unroll(family), meta_params, estimator_key)
        return TrainerState(
            meta_params=meta_params,
            meta_opt_state=self.meta_optimizer.init(meta_params),
            estimator_state=estimator_state,
            key=jax.random.key_data(next_key),
            step=jnp.zeros((), jnp.int32),
            regularizer_anchor=meta_params if self.regularizer.needs_anchor else (),
        )

    def init(self, key: Array, meta_params: Any = None) -> TrainerState:
        """Returns the initial state; meta-params come from the optimizer's own init unless given."""
        key = key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)
        params_key, trainer_key = jax.random.split(key)
        if meta_params is None:
            meta_params = self.learned_optimizer.init(params_key)
        replicated = self.parallelism.replicated_sharding()
        key_data = place_replicated(jax.random.key_data(trainer_key), replicated)
        return self._init(key_data, self.family, place_replicated(meta_params, replicated))

    def _step_impl(
        self, state: TrainerState, family: Any, mask: Any
    ) -> Tuple[TrainerState, Dict[str, Array]]:
        key, estimate_key = jax.random.split(jax.random.wrap_key_data(state.key))
        if self.mixture:
            gradient, estimator_state, metrics = self._estimate_mixture(state, family, mask, estimate_key)
        else:
            gradient, estimator_state, metrics = self._estimate(
                self.unroll(family), state.meta_params, state.estimator_state, mask, estimate_key
            )
        metrics = dict(metrics)
        if self.regularizer.enabled:
            _, penalty_gradient, penalty_metrics = self.regularizer.value_and_grad(
                self.learned_optimizer, state.meta_params, state.regularizer_anchor,
                jax.random.fold_in(estimate_key, KEY_STREAM))
            gradient = jax.tree.map(jnp.add, gradient, penalty_gradient)
            metrics.update(penalty_metrics)
        gradient = jax.tree.map(lambda g, m: g * m.astype(g.dtype), gradient, mask)
        gradient_norm = global_norm(gradient)
        finite = jnp.isfinite(gradient_norm)
        gradient = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), gradient)
        updates, meta_opt_state = self.meta_optimizer.update(gradient, state.meta_opt_state, state.meta_params)
        updates = jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, mask)
        meta_params = optax.apply_updates(state.meta_params, updates)
        meta_params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), meta_params, state.meta_params)
        meta_opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), meta_opt_state, state.meta_opt_state
        )
        metrics["meta_grad_norm"] = jnp.where(finite, gradient_norm, jnp.nan)
        metrics["skipped_update"] = (~finite).astype(jnp.int32)
        metrics["meta_params_norm"] = global_norm(meta_params)
        new_state = TrainerState(meta_params, meta_opt_state, estimator_state, jax.random.key_data(key), state.step + 1,
                                 state.regularizer_anchor)
        return new_state, metrics

    def _estimate(self, unroll: TruncatedUnroll, meta_params: Any, estimator_state: Any, mask: Any, key: Array):
        """One family's meta-gradient: one estimator call, or the mean of `accumulate` calls."""
        if self.accumulate == 1:
            return self.estimator.estimate(unroll, meta_params, estimator_state, key, mask)

        def one_call(carried_state, call_key):
            gradient, carried_state, metrics = self.estimator.estimate(unroll, meta_params, carried_state, call_key, mask)
            return carried_state, (gradient, metrics)

        estimator_state, (gradients, all_metrics) = jax.lax.scan(
            one_call, estimator_state, jax.random.split(key, self.accumulate)
        )
        gradient = jax.tree.map(lambda g: jnp.mean(g, axis=0), gradients)
        metrics = {k: (jnp.sum(v) if k.startswith("num_") else jnp.mean(v)) for k, v in all_metrics.items()}
        return gradient, estimator_state, metrics

    def _estimate_mixture(self, state: TrainerState, families: Tuple[TaskFamily, ...], mask: Any, key: Array):
        """Each family's meta-gradient on its own batch of tasks, averaged over families."""
        results = [
            self._estimate(self.unroll(f), state.meta_params, s, mask, k)
            for f, s, k in zip(families, state.estimator_state, jax.random.split(key, len(families)))
        ]
        gradient = jax.tree.map(lambda *gs: sum(gs) / len(gs), *[r[0] for r in results])
        metrics = {
            k: sum(r[2][k] for r in results) / (1 if k.startswith("num_") else len(results)) for k in results[0][2]
        }
        for name, result in zip(self.family_names, results):
            for key in ("meta_loss", "num_clipped", "median_normalized_loss"):
                metrics[f"{key}/{name}"] = result[2][key]
        return gradient, tuple(r[1] for r in results), metrics

    def phase_mask(self, meta_params: Any, phase: str = "all") -> Any:
        """Returns the 0/1 float mask of the meta-params that meta-training `phase` trains."""
        if phase not in self._phase_masks:
            trainable = self.learned_optimizer.trainable_mask(meta_params, phase)
            self._phase_masks[phase] = jax.tree.map(
                lambda t, p: jnp.full(jnp.shape(p), t, jnp.float32), trainable, meta_params
            )
        return self._phase_masks[phase]

    def step(self, state: TrainerState, mask: Any = None) -> Tuple[TrainerState, Dict[str, Array]]:
        """Runs one meta-step (one jitted call); `mask` (see phase_mask) limits which meta-params change."""
        if mask is None:
            mask = self.phase_mask(state.meta_params)
        new_state, metrics = self._step(state, self.family, mask)
        self.clipped_loss_watch.observe(new_state.step, metrics)
        return new_state, metrics

    @property
    def inner_steps_per_meta_step(self) -> int:
        """Inner training steps (over all tasks and particles) done by one meta-step."""
        per_family = self.estimator.num_tasks * self.estimator.num_particles * self.estimator.trunc_length
        return per_family * self.accumulate * len(self.family_names)
