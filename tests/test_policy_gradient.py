"""The policy-gradient estimator: credit assignment, unbiasedness against a closed form, a known optimum, config."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import meta_train
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train.policy_gradient import PolicyGradient, reward_to_go, steps_within_run
from meta_train.unroll import TruncatedUnroll

CURVATURES = (1.0, 3.0)
REPO = Path(__file__).resolve().parents[1]


class DiagonalQuadratic(tasks.Task):
    """0.5 * sum_i h_i x_i^2 from x0 ~ N(0, I); the loss is its own normaliser."""

    name = "diagonal_quadratic"

    def init(self, key):
        return {"x": jax.random.normal(key, (len(CURVATURES),), jnp.float32)}

    def loss(self, params, key, batch):
        return 0.5 * jnp.sum(jnp.asarray(CURVATURES) * jnp.square(params["x"]))


def expected_objective(log_learning_rate, log_std, num_steps, gamma):
    """(1/T) sum_{t<T} gamma^t E[c_t] for SGD plus N(0, std^2) action noise on DiagonalQuadratic, in closed form.

    x_{t+1} = r x_t + std * noise with r = 1 - lr h, so E[x_t^2] = r^{2t} + std^2 (1 + r^2 + ... + r^{2(t-1)}).
    """
    h = jnp.asarray(CURVATURES)
    r2 = jnp.square(1.0 - jnp.exp(log_learning_rate) * h)
    variance = jnp.exp(2 * log_std)
    total, second_moment, noise_sum = 0.0, jnp.ones_like(h), jnp.zeros_like(h)
    for t in range(num_steps):
        total = total + gamma**t * 0.5 * jnp.sum(h * second_moment)
        noise_sum = noise_sum * r2 + variance
        second_moment = r2 ** (t + 1) + noise_sum
    return total / num_steps


def test_reward_to_go_credits_each_action_with_the_later_costs_of_its_own_run():
    costs = jnp.asarray([[1.0, 2.0, 4.0, 8.0, 16.0]])[..., None]  # [tasks, steps, particles]
    resets = jnp.asarray([[False, True, False, False, False]])  # step 1 ends a run; step 2 starts the next
    before = reward_to_go(costs, resets, 0.5, costs_follow_actions=False)[0, :, 0]
    # train loss: action s leads to costs s+1, ... of its run; the last action's cost is beyond the truncation
    np.testing.assert_allclose(before, [2.0, 0.0, 8.0 + 0.5 * 16.0, 16.0, 0.0])
    after = reward_to_go(costs, resets, 0.5, costs_follow_actions=True)[0, :, 0]
    np.testing.assert_allclose(after, [1.0 + 0.5 * 2.0, 2.0, 4.0 + 0.5 * 8.0 + 0.25 * 16.0, 8.0 + 0.5 * 16.0, 16.0])
    steps = steps_within_run(jnp.asarray([7]), resets)
    np.testing.assert_array_equal(np.asarray(steps), [[7, 8, 0, 1, 2]])


@pytest.fixture(scope="module")
def quadratic_unroll():
    family = tasks.single_task_family(DiagonalQuadratic())
    horizon = meta_train.ConstantHorizon(4, stagger=False)
    return TruncatedUnroll(family, lopt.get("sgd"), horizon, max_meta_loss=1e6)


def test_gradient_is_unbiased_for_the_expected_discounted_cost(quadratic_unroll):
    """Means over repeats of 2048 tasks match d/dtheta and d/dlog-std of the closed-form objective within 4 s.e."""
    num_steps, gamma, learning_rate, std = 4, 0.9, 0.2, 0.3
    theta = {"log_learning_rate": jnp.log(jnp.float32(learning_rate))}
    log_std = jnp.log(jnp.float32(std))
    exact = jax.grad(expected_objective, argnums=(0, 1))(theta["log_learning_rate"], log_std, num_steps, gamma)

    def estimates(baseline):
        estimator = PolicyGradient(num_tasks=2048, trunc_length=num_steps, num_particles=2, std=std, gamma=gamma,
                                   baseline=baseline, normalize_advantages=False)

        @jax.jit
        def one(key):
            init_key, run_key = jax.random.split(key)
            state = estimator.init(quadratic_unroll, theta, init_key)
            gradient, log_std_gradient, *_ = estimator.policy_gradients(
                quadratic_unroll, theta, log_std, state.tasks, run_key)
            return jnp.stack([gradient["log_learning_rate"], log_std_gradient])

        return np.asarray(jax.lax.map(one, jax.random.split(jax.random.key(0), 24)))

    for baseline in ("leave_one_out", "none"):
        samples = estimates(baseline)
        mean, standard_error = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
        assert np.all(standard_error < 0.1 * np.abs(np.asarray(exact))), (baseline, standard_error, exact)
        np.testing.assert_array_less(np.abs(mean - np.asarray(exact)), 4 * standard_error)
        if baseline == "leave_one_out":
            loo_error = standard_error
    assert np.all(loo_error < standard_error)  # the baseline lowers the variance


def test_meta_training_finds_the_closed_form_optimal_learning_rate_and_shrinks_a_learned_std():
    """Over a 2-step run only the first action matters: E[c_1] is least at lr* = sum h^2 / sum h^3, for any std,
    and the action noise only adds cost, so a learned std shrinks."""
    family = tasks.single_task_family(DiagonalQuadratic())
    estimator = PolicyGradient(num_tasks=32, trunc_length=2, num_particles=4, std=0.1, learn_std=True,
                               std_learning_rate=0.01)
    trainer = meta_train.Trainer(family, lopt.get("sgd", learning_rate=0.1), estimator=estimator,
                                 horizon=meta_train.ConstantHorizon(2, stagger=False),
                                 meta_optimizer=optax.adam(0.03), max_meta_loss=1e6)
    state = trainer.init(jax.random.key(1))
    rates = []
    for _ in range(400):
        state, metrics = trainer.step(state)
        rates.append(float(jnp.exp(state.meta_params["log_learning_rate"])))
    h = np.asarray(CURVATURES)
    optimum = np.sum(h**2) / np.sum(h**3)
    assert abs(np.mean(rates[-50:]) - optimum) < 0.05 * optimum, (np.mean(rates[-50:]), optimum)
    assert float(metrics["policy_std"]) < 0.05


def test_config_file_selects_the_estimator_and_bad_keys_are_one_line_errors():
    path = REPO / "configs" / "li_malik_robust_regression.py"
    config = config_lib.load_config(path)
    run = build_lib.build(config)
    estimator = run.trainer.estimator
    assert isinstance(estimator, PolicyGradient) and isinstance(run.learned_optimizer, lopt.LiMalikPolicy)
    assert (estimator.num_particles, estimator.learn_std, estimator.gamma) == (20, True, 1.0)
    assert run.trainer.inner_steps_per_meta_step == 4 * 20 * 40
    pes = build_lib.build(config_lib.parse_overrides(
        config_lib.load_config(path), ["--config.meta_train.estimator.name=pes", "--config.meta_train.num_tasks=40",
                 "--config.meta_train.estimator.kwargs.trunc_length=40"]))
    assert pes.trainer.inner_steps_per_meta_step == run.trainer.inner_steps_per_meta_step
    for kwargs, message in (({"baseline": "critic"}, "baseline must be one of leave_one_out, none"),
                            ({"num_particles": 1}, "needs num_particles >= 2"),
                            ({"gamma": 1.5}, "0 < gamma <= 1")):
        config.meta_train.estimator.kwargs = kwargs
        with pytest.raises(config_lib.ConfigError, match=message) as error:
            build_lib.build(config)
        assert "\n" not in str(error.value) and str(error.value).startswith("config.meta_train.estimator")
