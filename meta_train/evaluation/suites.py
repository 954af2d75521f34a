"""Named evaluation suites: held-out tasks, tuned baselines and a learning-rate grid, as one declarative table.

A suite entry is one line: a name, a registered task family, its constructor arguments, the
full step budget, and what it holds out. `lopt-evaluate --suite NAME` turns a suite into an
evaluation Spec (budgets times `--budget-scale`) and adds the suite report (suite_report.py).

`heldout` judges the generalist (configs/generalist.py), which meta-trains on 8x8 MNIST,
Fashion-MNIST, CIFAR-10 grey and digits MLPs with one hidden layer of 32 and horizons up to
2,000 steps: no entry reuses one of those shapes. Its cost at full budget, for one learned
optimizer and the four baselines tuned over 7 learning rates (29 training runs per task
draw), is stated in README.md. A learned optimizer that takes a learning rate (the Celo2 rule:
a learned direction the user's schedule scales) is evaluated twice: with its stored settings,
and with its learning rate tuned per task over the same grid as the baselines (`NAME (tuned lr)`).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from meta_train.evaluation.run import EvaluationError, Setting, Spec, unique_labels

MIN_SCALED_STEPS = 10


class UnknownSuiteError(EvaluationError):
    """A suite name that is not in SUITES."""


class SuiteEntry(NamedTuple):
    """One held-out task: a registered family, its constructor arguments, the full step budget, what it tests."""

    name: str
    family: str
    kwargs: Dict[str, Any]
    num_steps: int
    holds_out: str


class Suite(NamedTuple):
    """Entries plus how they are judged: baselines tuned per task over `learning_rates`, task draws and seeds.

    `reference` is the baseline speedups are measured against; `schedule_reference` the one the
    suite counts wins (final loss at or below) against.
    """

    name: str
    entries: Tuple[SuiteEntry, ...]
    baselines: Tuple[str, ...]
    reference: str
    schedule_reference: str
    learning_rates: Tuple[float, ...]
    num_tasks: int
    seeds: Tuple[int, ...]


HELDOUT = Suite(
    name="heldout",
    entries=(
        SuiteEntry("mlp_wide", "mlp_image", {"dataset": "fashion_mnist", "image_size": 8, "hidden": [128]}, 2_000,
                   "4x wider (hidden 128)"),
        SuiteEntry("mlp_deep", "mlp_image", {"dataset": "mnist", "image_size": 8, "hidden": [32, 32, 32]}, 2_000,
                   "3x deeper (3 hidden layers)"),
        SuiteEntry("mlp_long", "mlp_image", {"dataset": "fashion_mnist", "image_size": 8, "hidden": [64]}, 20_000,
                   "10x the longest horizon (and hidden 64)"),
        SuiteEntry("mlp_mnist16", "mlp_image", {"dataset": "mnist", "image_size": 16, "hidden": [32]}, 2_000,
                   "16x16 inputs"),
        SuiteEntry("mlp_fmnist28", "mlp_image", {"dataset": "fashion_mnist", "image_size": 28, "hidden": [32]}, 2_000,
                   "28x28 inputs"),
        SuiteEntry("cnn_cifar10", "cnn_image", {"dataset": "cifar10", "image_size": 8, "channels": [8, 16],
                                                "batch_size": 32}, 1_000, "a CNN on colour CIFAR-10"),
        SuiteEntry("lm_shakespeare", "transformer_lm", {"dataset": "tiny_shakespeare", "width": 32, "depth": 2,
                                                         "heads": 2, "seq_len": 32, "batch_size": 16}, 1_000,
                   "a character transformer LM"),
        SuiteEntry("logreg_breast_cancer", "logistic_regression", {"dataset": "breast_cancer"}, 1_000,
                   "logistic regression, tabular"),
        SuiteEntry("finance_sp500", "finance", {"market": "sp500", "target": "volatility"}, 2_000,
                   "volatility forecasting from daily returns"),
    ),
    baselines=("adam", "adamw_cosine", "muon", "schedule_free_adamw"),
    reference="adam",
    schedule_reference="adamw_cosine",
    learning_rates=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    num_tasks=1,
    seeds=(0,),
)

SUITES: Dict[str, Suite] = {HELDOUT.name: HELDOUT}


def get_suite(name: str) -> Suite:
    """Returns the suite called `name`; an unknown name is a one-line error listing the valid ones."""
    if name not in SUITES:
        raise UnknownSuiteError(f"unknown suite {name!r}; choose from {', '.join(sorted(SUITES))}")
    return SUITES[name]


def scaled_steps(num_steps: int, budget_scale: float) -> int:
    """Returns `num_steps * budget_scale` rounded, at least MIN_SCALED_STEPS (the speedup's smoothing window)."""
    return max(MIN_SCALED_STEPS, int(round(num_steps * budget_scale)))


def suite_spec(
    suite: Suite,
    optimizers: Sequence[str],
    *,
    budget_scale: float = 1.0,
    data_dir: str = "",
    learning_rates: Optional[Sequence[float]] = None,
    baselines: Optional[Sequence[str]] = None,
    num_tasks: Optional[int] = None,
    seeds: Optional[Sequence[int]] = None,
    task_seed: int = 10_000,
    final_batches: int = 8,
) -> Spec:
    """Returns the evaluation Spec of `suite` for `optimizers`; None arguments take the suite's own values."""
    if not budget_scale > 0:
        raise EvaluationError(f"--budget-scale must be positive, got {budget_scale}")
    baselines = tuple(suite.baselines if baselines is None else baselines)
    missing = [name for name in (suite.reference, suite.schedule_reference) if name not in baselines]
    if missing:
        raise EvaluationError(
            f"suite {suite.name!r} needs the baselines {', '.join(missing)} (it measures against them)")
    labels = unique_labels([entry.name for entry in suite.entries])
    settings = tuple(Setting(label, entry.family, dict(entry.kwargs), scaled_steps(entry.num_steps, budget_scale))
                     for label, entry in zip(labels, suite.entries))
    return Spec(
        optimizers=tuple(optimizers),
        settings=settings,
        baselines=baselines,
        learning_rates=tuple(suite.learning_rates if learning_rates is None else learning_rates),
        seeds=tuple(suite.seeds if seeds is None else seeds),
        num_tasks=suite.num_tasks if num_tasks is None else num_tasks,
        task_seed=task_seed,
        valid_every=0,
        final_batches=final_batches,
        tune_on="train",
        reference=suite.reference,
        data_dir=data_dir,
        tune_learned=True,
    )
