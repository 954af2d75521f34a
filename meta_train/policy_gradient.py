"""Policy-gradient meta-training (Li & Malik 2016's framing): the learned optimizer as a Gaussian policy, REINFORCE.

An inner run is an episode: the state is what the optimizer sees (its own history), the action
is the step, and the cost of step t is the normalised loss c_t. The policy is Gaussian, its mean
the learned optimizer's update and its standard deviation `std` (fixed, or learned when
`learn_std`); each task runs `num_particles` trajectories that share the task, its data, its
start and its random batches and differ only in their action noise. The objective is the
expected discounted cost of a run, J = E[sum_t gamma^t c_t], and the estimate is

    grad J ~ mean over tasks, particles and steps of gamma^t * A_t * grad log pi(a_t | s_t),

where A_t is the discounted cost that follows action t within its run (reward-to-go) minus a
baseline: by default the mean reward-to-go of the task's other particles at the same step
(leave-one-out, which is independent of the particle's own actions, so the estimate stays
unbiased). `normalize_advantages` divides the advantages by their standard deviation over the
batch (a per-step rescaling of the step size; centring is the baseline's job).

Why REINFORCE with a baseline and not PPO: an `Estimator` returns one meta-gradient per call for
the trainer's meta-optimizer to apply, which is what REINFORCE is; PPO's clipped surrogate is
made for several optimisation epochs over one batch of trajectories with the old policy's
probabilities, an inner optimiser loop that would bypass the trainer, and its clipping biases
the gradient. REINFORCE's estimate is unbiased, which is testable against a closed form
(tests/test_policy_gradient.py), and its variance is what a comparison with PES measures.

Bias: the estimate is unbiased for J when every truncation covers whole inner runs (a constant
horizon equal to `trunc_length`, not staggered). With shorter truncations the costs after a
truncation's end are not credited to its actions (truncated returns, the analogue of truncated
backprop's short-horizon bias), and an optimizer whose state depends on its meta-parameters
(an LSTM's hidden state) is differentiated only within the truncation. A history-based policy
(li_malik_policy) or a hand-designed rule has no such state.
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from meta_train.estimator import Estimator
from meta_train.registry import register_estimator
from meta_train.unroll import TaskState, TruncatedUnroll, map_over_tasks, truncation_metrics

Array = jax.Array

BASELINES = ("leave_one_out", "none")
# The learned log-std is kept within [log 1e-6, log 10]: beyond either end the policy is degenerate.
LOG_STD_BOUNDS = (math.log(1e-6), math.log(10.0))


class PolicyGradientState(NamedTuple):
    """Inner runs of every task ([tasks, particles] trajectories), the policy's log-std and its optimizer state."""

    tasks: TaskState
    log_std: Array
    std_opt_state: Any


def steps_within_run(start_steps: Array, resets: Array) -> Array:
    """Returns [tasks, steps]: the inner-step index t (from the run's start) of each step of a truncation.

    `start_steps` [tasks] is each task's step counter at the truncation's start; a restart
    flagged at step s makes step s + 1 the first (index 0) of a new run.
    """

    def advance(step, reset):
        return jnp.where(reset, 0, step + 1), step

    def one_task(start, task_resets):
        return jax.lax.scan(advance, start, task_resets)[1]

    return jax.vmap(one_task)(start_steps, resets)


def reward_to_go(costs: Array, resets: Array, gamma: float, costs_follow_actions: bool) -> Array:
    """Returns [tasks, steps, particles]: the discounted sum of the costs each step's action leads to, within its run.

    `costs` [tasks, steps, particles], `resets` [tasks, steps]. When costs precede actions (the
    train meta-loss is the loss at the parameters before the step) the action of step s leads to
    the costs of steps s+1, s+2, ... of its run, and the last step's action to none seen in this
    truncation; when they follow (the valid meta-loss, measured after the step) it leads to
    those of steps s, s+1, ...
    """
    continues = (1.0 - resets.astype(costs.dtype))[..., None]
    if costs_follow_actions:
        immediate = costs
    else:
        following = jnp.concatenate([costs[:, 1:], jnp.zeros_like(costs[:, :1])], axis=1)
        immediate = continues * following

    def backward(later, inputs):
        now_cost, now_continues = inputs
        value = now_cost + gamma * now_continues * later
        return value, value

    def one_task(task_immediate, task_continues):
        start = jnp.zeros_like(task_immediate[0])
        return jax.lax.scan(backward, start, (task_immediate, task_continues), reverse=True)[1]

    return jax.vmap(one_task)(immediate, continues)


def leave_one_out_baseline(returns: Array) -> Array:
    """Returns, for each particle, the mean of the other particles' values along the last axis (needs >= 2)."""
    count = returns.shape[-1]
    return (jnp.sum(returns, axis=-1, keepdims=True) - returns) / (count - 1)


@register_estimator("policy_gradient")
class PolicyGradient(Estimator):
    """REINFORCE with a per-step baseline over truncations of inner training (see the module docstring).

    Config keys (`meta_train.estimator.kwargs`): `trunc_length`, `num_particles` (trajectories per
    task), `std` (the policy's initial or fixed standard deviation), `learn_std` and
    `std_learning_rate` (Adam on the log-std, inside the estimator), `gamma` (discount),
    `baseline` ("leave_one_out" or "none") and `normalize_advantages`.
    """

    def __init__(
        self,
        num_tasks: int = 8,
        trunc_length: int = 40,
        num_particles: int = 8,
        std: float = 0.01,
        learn_std: bool = False,
        std_learning_rate: float = 0.01,
        gamma: float = 1.0,
        baseline: str = "leave_one_out",
        normalize_advantages: bool = True,
        task_map: str = "vmap",
    ):
        if int(num_tasks) < 1 or int(trunc_length) < 1 or int(num_particles) < 1:
            raise ValueError(f"policy_gradient needs num_tasks, trunc_length and num_particles >= 1; got "
                             f"{num_tasks}, {trunc_length}, {num_particles}")
        if not float(std) > 0 or not float(std_learning_rate) > 0:
            raise ValueError(f"policy_gradient needs std > 0 and std_learning_rate > 0; got {std}, {std_learning_rate}")
        if not 0 < float(gamma) <= 1:
            raise ValueError(f"policy_gradient needs 0 < gamma <= 1, got {gamma}")
        if baseline not in BASELINES:
            raise ValueError(f"policy_gradient baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        if baseline == "leave_one_out" and int(num_particles) < 2:
            raise ValueError("policy_gradient's leave_one_out baseline needs num_particles >= 2 (trajectories per task)")
        map_over_tasks(lambda x: x, task_map)
        self.num_tasks, self.trunc_length, self.num_particles = int(num_tasks), int(trunc_length), int(num_particles)
        self.std, self.learn_std, self.std_learning_rate = float(std), bool(learn_std), float(std_learning_rate)
        self.gamma, self.baseline, self.normalize_advantages = float(gamma), baseline, bool(normalize_advantages)
        self.task_map = task_map
        self.std_optimizer = optax.adam(self.std_learning_rate)

    def sharding_prefix(self, by_task: Any, replicated: Any) -> Any:
        """Tasks are split over devices; the log-std and its optimizer state are replicated."""
        return PolicyGradientState(tasks=by_task, log_std=replicated, std_opt_state=replicated)

    def particles(self, meta_params: Any) -> Any:
        """Returns meta_params broadcast to [tasks, particles, ...], differentiably."""
        shape = (self.num_tasks, self.num_particles)
        return jax.tree.map(lambda x: jnp.broadcast_to(x, shape + jnp.shape(x)), meta_params)

    def init(self, unroll: TruncatedUnroll, meta_params: Any, key: Array) -> PolicyGradientState:
        """Starts every task's inner run (all its trajectories at one start) and the log-std at log(std)."""
        tasks = jax.vmap(unroll.init_task)(self.particles(meta_params), jax.random.split(key, self.num_tasks))
        log_std = jnp.asarray(math.log(self.std), jnp.float32)
        return PolicyGradientState(jax.lax.stop_gradient(tasks), log_std, self.std_optimizer.init(log_std))

    def step_weights(self, result: Any, start_steps: Array, costs_follow_actions: bool) -> Tuple[Array, Array]:
        """Returns (weights [tasks, steps, particles] = gamma^t * advantage, the advantages before normalising)."""
        returns = reward_to_go(result.meta_losses, result.resets, self.gamma, costs_follow_actions)
        baseline = leave_one_out_baseline(returns) if self.baseline == "leave_one_out" else 0.0
        advantages = returns - baseline
        scaled = advantages / (jnp.std(advantages) + 1e-8) if self.normalize_advantages else advantages
        first_cost_step = steps_within_run(start_steps, result.resets) + (0 if costs_follow_actions else 1)
        discount = jnp.power(self.gamma, first_cost_step.astype(jnp.float32))[..., None]
        return discount * scaled, advantages

    def policy_gradients(
        self, unroll: TruncatedUnroll, meta_params: Any, log_std: Array, tasks: TaskState, key: Array
    ) -> Tuple[Any, Array, TaskState, Any, Array]:
        """Runs one truncation of every task's trajectories as a Gaussian policy and returns
        (gradient for meta_params, gradient for log_std, new task states, TruncationResult, advantages)."""
        task_keys = jax.random.split(key, self.num_tasks)
        start = jax.lax.stop_gradient(tasks)
        costs_follow_actions = unroll.meta_loss == "valid"

        def surrogate(theta, task_log_std):
            def run(task_unroll, particle_theta, task_state, task_key, std):
                return task_unroll.truncation(particle_theta, task_state, task_key, self.trunc_length, action_std=std)

            stds = jnp.broadcast_to(jnp.exp(task_log_std), (self.num_tasks,))
            new_tasks, result = unroll.map_tasks(run, self.task_map)(
                self.particles(theta), start, task_keys, stds)
            weights, advantages = self.step_weights(jax.lax.stop_gradient(result), start.step, costs_follow_actions)
            count = self.num_tasks * self.num_particles * self.trunc_length
            return jnp.sum(weights * result.log_probs) / count, (new_tasks, result, advantages)

        (theta_gradient, log_std_gradient), (new_tasks, result, advantages) = jax.grad(
            surrogate, argnums=(0, 1), has_aux=True)(meta_params, log_std)
        return theta_gradient, log_std_gradient, jax.lax.stop_gradient(new_tasks), result, advantages

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: PolicyGradientState, key: Array, mask: Any = None
    ) -> Tuple[Any, PolicyGradientState, Dict[str, Array]]:
        """Runs one truncation of every task's trajectories and returns the REINFORCE meta-gradient."""
        gradient, log_std_gradient, tasks, result, advantages = self.policy_gradients(
            unroll, meta_params, state.log_std, state.tasks, key)
        if mask is not None:
            gradient = jax.tree.map(lambda g, m: g * m.astype(g.dtype), gradient, mask)
        log_std, std_opt_state = state.log_std, state.std_opt_state
        if self.learn_std:
            finite = jnp.isfinite(log_std_gradient)
            update, new_opt_state = self.std_optimizer.update(jnp.where(finite, log_std_gradient, 0.0), std_opt_state)
            log_std = jnp.clip(jnp.where(finite, log_std + update, log_std), *LOG_STD_BOUNDS)
            std_opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_opt_state, std_opt_state)
        metrics = truncation_metrics(result, jnp.mean(result.meta_losses))
        metrics["policy_std"] = jnp.exp(log_std)
        metrics["advantage_std"] = jnp.std(advantages)
        return gradient, PolicyGradientState(tasks, log_std, std_opt_state), metrics
