"""Reproduce Li & Malik (2016), "Learning to Optimize": a history-based policy, trained by policy gradient on each
problem class, against gradient descent, momentum, conjugate gradient and L-BFGS on held-out objectives.

For each class (logistic regression, Geman-McClure robust linear regression, a small two-layer
classifier), `li_malik_policy` is meta-trained with the `policy_gradient` estimator on a fixed set
of training objectives (90, as the paper's logistic regression), `--particles` trajectories of
40 steps per objective and meta-step, as the paper's 20 trajectories of 40 steps. Gradient descent
and momentum have their learning rate (and momentum) tuned on the same training objectives, for
the lowest mean objective over the evaluation run; conjugate gradient (Polak-Ribiere+) and
L-BFGS (optax.lbfgs) take their steps from line searches and have nothing to tune. All are then
run on held-out objectives of the class, and the mean objective is plotted against the
iteration. On logistic regression the policy is also meta-trained with PES at equal compute
(the same inner steps per meta-step and the same number of meta-steps), and timed.

    python scripts/reproduce_li_malik.py --out benchmarks/li_malik.json --figure benchmarks/li_malik.png

Meta-training results are kept in --workdir (exported policies and their meta-losses), so a
rerun resumes after the last finished training. Writes OUT (JSON) and OUT with .md (a table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
import meta_train
import tasks
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation import line_search
from meta_train.files import write_text_atomic
from meta_train.pes import PES
from meta_train.policy_gradient import PolicyGradient

PROBLEMS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "logistic_regression": ("logistic_regression",
                            {"dataset": "synthetic", "dim": 3, "num_examples": 100, "full_batch": True}),
    "robust_linear_regression": ("robust_linear_regression", {"dim": 3, "num_examples": 25}),
    "neural_net_classifier": ("gaussian_mixture_mlp", {"dim": 2, "hidden": 4, "num_classes": 2,
                                                       "clusters_per_class": 2, "num_examples": 100}),
}
LEARNING_RATES = tuple(float(x) for x in np.logspace(-3, 2, 21))
MOMENTA = (0.5, 0.9)
PES_CLASS = "logistic_regression"


class TrainingObjectives(tasks.TaskFamily):
    """A fixed, finite set of a family's tasks (the paper's training objectives); sampling picks one uniformly.

    Task i is the one `curves.train_curves` builds from `keys[i]`, so baselines can be tuned on exactly these.
    """

    data_fields = ("family", "configs")

    def __init__(self, family: tasks.TaskFamily, keys: jax.Array):
        self.family = family
        self.configs = jax.vmap(lambda key: family.sample(jax.random.split(key, 4)[0]))(keys)
        self.num_objectives = int(keys.shape[0])
        self.name = family.name

    def sample(self, key: jax.Array) -> Any:
        """Returns the configuration of one training objective, chosen uniformly."""
        index = jax.random.randint(key, (), 0, self.num_objectives)
        return jax.tree.map(lambda c: c[index], self.configs)

    def task(self, cfg: Any) -> tasks.Task:
        """Returns the family's task for `cfg`."""
        return self.family.task(cfg)


def parse_args() -> argparse.Namespace:
    """Returns the command-line settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/li_malik.json", help="JSON results; a .md table goes beside it")
    parser.add_argument("--figure", default="benchmarks/li_malik.png")
    parser.add_argument("--workdir", default="runs/li_malik", help="exported policies, for resuming")
    parser.add_argument("--meta-steps", type=int, default=1500)
    parser.add_argument("--num-tasks", type=int, default=4, help="training objectives per meta-step")
    parser.add_argument("--particles", type=int, default=20, help="trajectories per objective and meta-step")
    parser.add_argument("--horizon", type=int, default=40, help="steps per training trajectory")
    parser.add_argument("--eval-steps", type=int, default=100, help="iterations on held-out objectives")
    parser.add_argument("--train-objectives", type=int, default=90)
    parser.add_argument("--eval-objectives", type=int, default=100)
    parser.add_argument("--std", type=float, default=0.01, help="initial action noise (learned)")
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--pes-std", type=float, default=0.01)
    parser.add_argument("--meta-lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def meta_optimizer(args: argparse.Namespace) -> optax.GradientTransformation:
    """Adam with global-norm clipping and a cosine decay to 0.1x over the run."""
    schedule = optax.cosine_decay_schedule(args.meta_lr, args.meta_steps, alpha=0.1)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def meta_train_policy(args: argparse.Namespace, training: tasks.TaskFamily, estimator: Any, label: str
                      ) -> Tuple[Any, List[float], float, bool]:
    """Meta-trains li_malik_policy with `estimator`; returns (meta-params, meta-losses, seconds, loaded), loading
    the export in --workdir (loaded=True) when this training finished before."""
    optimizer = lopt.get("li_malik_policy")
    path = Path(args.workdir) / f"{label}.lopt"
    if path.exists():
        loaded = lopt.load(path)
        print(f"{label}: loaded {path}", flush=True)
        return loaded.meta_params, loaded.provenance["meta_losses"], loaded.provenance["seconds"], True
    trainer = meta_train.Trainer(training, optimizer, estimator=estimator,
                                 horizon=meta_train.ConstantHorizon(args.horizon, stagger=False),
                                 meta_optimizer=meta_optimizer(args))
    start = time.time()
    state = trainer.init(jax.random.key(args.seed))
    losses = []
    for step in range(args.meta_steps):
        state, metrics = trainer.step(state)
        losses.append(float(metrics["meta_loss"]))
        if (step + 1) % max(1, args.meta_steps // 10) == 0:
            extra = f", policy std {float(metrics['policy_std']):.4f}" if "policy_std" in metrics else ""
            print(f"{label}: meta-step {step + 1}: meta-loss {np.mean(losses[-100:]):.4f}{extra}", flush=True)
    seconds = time.time() - start
    provenance = {"meta_losses": losses, "seconds": seconds, "estimator": type(estimator).__name__,
                  "inner_steps_per_meta_step": trainer.inner_steps_per_meta_step}
    path.parent.mkdir(parents=True, exist_ok=True)
    lopt.save(path, optimizer, state.meta_params, provenance=provenance)
    return state.meta_params, losses, seconds, False


def tuned_curves(family: tasks.TaskFamily, baseline: Any, train_keys: jax.Array, eval_keys: jax.Array,
                 num_steps: int) -> Tuple[np.ndarray, float]:
    """Tunes the baseline's learning rate on the training objectives (lowest mean objective over the run, averaged
    over objectives) and returns (its held-out loss curves [objectives, steps], the rate)."""
    grid = evaluate.learning_rate_grid(baseline, LEARNING_RATES)
    per_rate = evaluate.grid_curves(family, baseline, grid, train_keys, num_steps, final_batches=1).train_losses
    per_rate = np.where(np.isfinite(per_rate), per_rate, np.inf)
    score = np.mean(per_rate, axis=(1, 2))
    best = int(np.argmin(score))
    rate = LEARNING_RATES[best]
    theta = baseline.with_learning_rate(None, rate)
    held_out = evaluate.train_curves(family, baseline, theta, eval_keys, num_steps, final_batches=1)
    return with_final(held_out.train_losses, held_out.final_losses), rate


def with_final(losses: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Returns [objectives, steps + 1]: the objective at iterations 0..steps (the last after the final step)."""
    return np.concatenate([np.asarray(losses), np.asarray(final)[:, None]], axis=1)


def paired(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """Returns the mean of a - b over objectives and its standard error (paired: same objectives and starts)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return {"mean": float(np.mean(diff)), "standard_error": float(np.std(diff, ddof=1) / math.sqrt(diff.size))}


def evaluate_class(args: argparse.Namespace, name: str, family: tasks.TaskFamily, theta: Any,
                   train_keys: jax.Array, eval_keys: jax.Array) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Runs the trained policy and the tuned baselines on held-out objectives; returns (summary with mean curves
    and comparisons, each optimizer's objective values [objectives, iterations + 1])."""
    steps = args.eval_steps
    policy = lopt.get("li_malik_policy")
    runs: Dict[str, np.ndarray] = {}
    learned = evaluate.train_curves(family, policy, theta, eval_keys, steps, final_batches=1)
    runs["learned policy"] = with_final(learned.train_losses, learned.final_losses)
    untrained = evaluate.train_curves(family, policy, policy.init(jax.random.key(0)), eval_keys, steps, final_batches=1)
    rates = {}
    runs["gradient descent"], rates["gradient descent"] = tuned_curves(
        family, lopt.get("sgd"), train_keys, eval_keys, steps)
    momentum_runs = {}
    for momentum in MOMENTA:
        momentum_runs[momentum] = tuned_curves(family, lopt.get("sgd_momentum", momentum=momentum), train_keys,
                                               train_keys, steps)
    best_momentum = min(MOMENTA, key=lambda m: np.mean(momentum_runs[m][0]))  # chosen on training objectives
    runs["momentum"], momentum_rate = tuned_curves(
        family, lopt.get("sgd_momentum", momentum=best_momentum), train_keys, eval_keys, steps)
    rates["momentum"] = {"learning_rate": momentum_rate, "momentum": best_momentum}
    evaluations, searched = {}, {}
    for label, solver in (("conjugate gradient", line_search.conjugate_gradient()), ("L-BFGS", optax.lbfgs())):
        result = line_search.line_search_curves(family, solver, eval_keys, steps)
        runs[label] = with_final(result.train_losses, result.final_losses)
        evaluations[label] = float(np.mean(result.evaluations))
        searched[label] = result
    measures = measure_values(args, runs, searched)
    best = np.min(np.stack([np.min(curve, axis=1) for curve in runs.values()]), axis=0)  # per objective
    comparisons = {}
    for label in runs:
        if label == "learned policy":
            continue
        comparisons[label] = {}
        for measure, values in measures.items():
            difference = paired(values["learned policy"], values[label])
            # "as well as or better": not worse by more than two standard errors (paired over objectives)
            comparisons[label][measure] = {**difference,
                                           "as_good_or_better": difference["mean"] <= 2 * difference["standard_error"]}
    return {
        "family": name,
        "mean_curves": {label: np.mean(curve, axis=0).tolist() for label, curve in runs.items()},
        "mean_curves_per_evaluation": {
            label: [float(np.mean(result.at_evaluations(n))) for n in range(steps + 1)]
            for label, result in searched.items()},
        "mean_excess_curves": {label: np.mean(curve - best[:, None], axis=0).tolist() for label, curve in runs.items()},
        "mean_excess_curves_per_evaluation": {
            label: [float(np.mean(result.at_evaluations(n) - best)) for n in range(steps + 1)]
            for label, result in searched.items()},
        "mean": {measure: {label: float(np.mean(v)) for label, v in values.items()}
                 for measure, values in measures.items()},
        "untrained_policy_mean_final": float(np.mean(untrained.final_losses)),
        "tuned": rates,
        "line_search_evaluations_per_iteration": evaluations,
        "learned_minus_baseline": comparisons,
        "claim_holds": {measure: all(c[measure]["as_good_or_better"] for c in comparisons.values())
                        for measure in measures},
    }, runs


def measure_values(args: argparse.Namespace, runs: Dict[str, np.ndarray],
                   searched: Dict[str, line_search.LineSearchCurves]) -> Dict[str, Dict[str, np.ndarray]]:
    """Returns, per measure, each optimizer's value on every objective: the objective at the training horizon, at
    the end of the run, averaged over the run's iterations (which rewards converging fast), and after as many
    objective-and-gradient evaluations as the first-order methods make in the training horizon and the run."""
    measures = {
        f"at_iteration_{args.horizon}": {label: curve[:, args.horizon] for label, curve in runs.items()},
        f"at_iteration_{args.eval_steps}": {label: curve[:, -1] for label, curve in runs.items()},
        "mean_over_iterations": {label: curve.mean(axis=1) for label, curve in runs.items()},
    }
    for budget in (args.horizon, args.eval_steps):
        measures[f"at_{budget}_evaluations"] = {
            label: searched[label].at_evaluations(budget) if label in searched else curve[:, budget]
            for label, curve in runs.items()}
    return measures


def plot(results: Dict[str, Any], path: str, args: argparse.Namespace) -> None:
    """Draws the mean objective against the iteration per class, and PG vs PES on the PES class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes = axes.flatten()
    floor = 1e-7  # log axes: an excess of exactly 0 is drawn at the floor
    for axis, name in zip(axes, PROBLEMS):
        for label, curve in results["classes"][name]["mean_excess_curves"].items():
            line, = axis.plot(np.maximum(curve, floor), label=label, linewidth=2.5 if label == "learned policy" else 1.2)
            per_evaluation = results["classes"][name]["mean_excess_curves_per_evaluation"].get(label)
            if per_evaluation is not None:
                axis.plot(np.maximum(per_evaluation, floor), color=line.get_color(), linestyle="--", linewidth=1.0,
                          label=f"{label}, per evaluation")
        axis.axvline(args.horizon, color="grey", linestyle=":", linewidth=0.8)
        axis.set_title(name.replace("_", " "))
        axis.set_xlabel("iteration (dashed: objective-and-gradient evaluations)")
        axis.set_ylabel("mean objective - best reached (held-out)")
        axis.set_yscale("log")
    axes[0].legend(fontsize=8)
    comparison = results["policy_gradient_vs_pes"]
    axis = axes[-1]
    reference = np.asarray(results["classes"][PES_CLASS]["mean_curves"]["conjugate gradient"])[-1]
    for label in ("policy_gradient", "pes"):
        excess = np.asarray(comparison[label]["mean_curve"]) - reference
        axis.plot(np.maximum(excess, floor), label=f"{label} ({comparison[label]['seconds']:.0f} s of meta-training)")
    axis.axvline(args.horizon, color="grey", linestyle=":", linewidth=0.8)
    axis.set_title(f"{PES_CLASS.replace('_', ' ')}: PG vs PES (equal inner steps)")
    axis.set_xlabel("iteration")
    axis.set_ylabel("mean objective - CG's final mean")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def markdown(results: Dict[str, Any], args: argparse.Namespace) -> str:
    """Returns the results table for BENCHMARKS.md."""
    labels = ["learned policy", "gradient descent", "momentum", "conjugate gradient", "L-BFGS"]
    lines = [f"Mean objective on {args.eval_objectives} held-out objectives per class: at iteration {args.horizon} "
             f"(the training horizon), at iteration {args.eval_steps} (the end), averaged over iterations "
             f"0..{args.eval_steps}, and after {args.horizon} and {args.eval_steps} objective-and-gradient evaluations "
             "(the same as iterations for the policy, GD and momentum; CG and L-BFGS spend several per iteration on "
             "their line searches). 'As good or better' = the learned policy is not worse than any baseline by more "
             "than 2 paired standard errors.",
             "", "| class | measure | " + " | ".join(labels) + " | as good or better |",
             "|---|---|" + "---|" * (len(labels) + 1)]
    for name, r in results["classes"].items():
        for measure, values_by_label in r["mean"].items():
            values = " | ".join(f"{values_by_label[label]:.4g}" for label in labels)
            verdict = "yes" if r["claim_holds"][measure] else "no"
            lines.append(f"| {name} | {measure.replace('_', ' ')} | {values} | {verdict} |")
    lines += ["", "Evaluations per iteration of the line-search methods: " + "; ".join(
        f"{name} " + ", ".join(f"{label} {count:.1f}" for label, count in
                               r["line_search_evaluations_per_iteration"].items())
        for name, r in results["classes"].items()) + "."]
    c = results["policy_gradient_vs_pes"]
    lines += ["", f"Policy gradient vs PES on {PES_CLASS}, {c['inner_steps_per_meta_step']} inner steps per meta-step, "
              f"{args.meta_steps} meta-steps each:", "",
              "| estimator | meta-training time (s) | held-out mean objective at end | mean over iterations |",
              "|---|---|---|---|"]
    for label in ("policy_gradient", "pes"):
        lines.append(f"| {label} | {c[label]['seconds']:.0f} | {c[label]['mean_final']:.4g} | "
                     f"{c[label]['mean_over_iterations']:.4g} |")
    d = c["pg_minus_pes_final"]
    lines += ["", f"PG - PES, objective at the end: {d['mean']:+.4g} +- {d['standard_error']:.2g} (s.e., paired)",
              "", f"Verdict: {results['verdict']}", "",
              f"Total time {results['setup']['total_seconds']:.0f} s on {results['setup']['machine']}"
              + (f" (this invocation; {len(results['setup']['trainings_loaded_from_workdir'])} meta-trainings taking "
                 f"{results['setup']['loaded_trainings_seconds']:.0f} s were loaded from --workdir)."
                 if results["setup"]["trainings_loaded_from_workdir"] else ".")]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Meta-trains per class, evaluates against tuned baselines, compares PG with PES, writes JSON, .md, PNG."""
    args = parse_args()
    start = time.time()
    train_keys = jax.random.split(jax.random.key(args.seed + 1), args.train_objectives)
    eval_keys = evaluate.held_out_task_keys(args.seed, args.eval_objectives)
    pg = PolicyGradient(num_tasks=args.num_tasks, trunc_length=args.horizon, num_particles=args.particles,
                        std=args.std, learn_std=True, gamma=args.gamma)
    results: Dict[str, Any] = {"classes": {}, "meta_losses": {}, "meta_train_seconds": {}}
    loaded_seconds: Dict[str, float] = {}  # trainings loaded from --workdir instead of run by this invocation
    for name, (family_name, kwargs) in PROBLEMS.items():
        family = tasks.get(family_name, **kwargs)
        training = TrainingObjectives(family, train_keys)
        theta, losses, seconds, loaded = meta_train_policy(args, training, pg, f"policy_gradient_{name}")
        if loaded:
            loaded_seconds[f"policy_gradient_{name}"] = seconds
        results["meta_losses"][name] = losses
        results["meta_train_seconds"][name] = seconds
        results["classes"][name], runs = evaluate_class(args, name, family, theta, train_keys, eval_keys)
        if name == PES_CLASS:
            pg_runs = runs["learned policy"]
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                      results["classes"][name]["mean"]["mean_over_iterations"].items()), flush=True)

    family = tasks.get(PROBLEMS[PES_CLASS][0], **PROBLEMS[PES_CLASS][1])
    training = TrainingObjectives(family, train_keys)
    pes = PES(num_tasks=args.num_tasks * args.particles // 2, trunc_length=args.horizon, std=args.pes_std)
    pes_theta, pes_losses, pes_seconds, loaded = meta_train_policy(args, training, pes, f"pes_{PES_CLASS}")
    if loaded:
        loaded_seconds[f"pes_{PES_CLASS}"] = pes_seconds
    policy = lopt.get("li_malik_policy")
    pes_curves = evaluate.train_curves(family, policy, pes_theta, eval_keys, args.eval_steps, final_batches=1)
    pes_runs = with_final(pes_curves.train_losses, pes_curves.final_losses)
    pg_mean = pg_runs.mean(axis=0)
    inner_steps = args.num_tasks * args.particles * args.horizon
    results["policy_gradient_vs_pes"] = {
        "inner_steps_per_meta_step": inner_steps,
        "policy_gradient": {"seconds": results["meta_train_seconds"][PES_CLASS], "mean_curve": pg_mean.tolist(),
                            "mean_final": float(pg_mean[-1]), "mean_over_iterations": float(pg_mean.mean()),
                            "meta_losses": results["meta_losses"][PES_CLASS]},
        "pes": {"seconds": pes_seconds, "mean_curve": pes_runs.mean(axis=0).tolist(),
                "mean_final": float(pes_runs[:, -1].mean()), "mean_over_iterations": float(pes_runs.mean()),
                "meta_losses": pes_losses, "num_tasks": pes.num_tasks, "std": args.pes_std},
        "pg_minus_pes_final": paired(pg_runs[:, -1], pes_runs[:, -1]),
        "pg_minus_pes_mean_over_iterations": paired(pg_runs.mean(axis=1), pes_runs.mean(axis=1)),
    }
    parts = []
    for measure in next(iter(results["classes"].values()))["claim_holds"]:
        holds = [name for name, r in results["classes"].items() if r["claim_holds"][measure]]
        parts.append(f"{measure.replace('_', ' ')}: {len(holds)} of {len(PROBLEMS)} classes"
                     + (f" ({', '.join(holds)})" if holds else ""))
    results["verdict"] = ("'performs as well as or better than' tuned GD, momentum, CG and L-BFGS (not worse than "
                          "any by > 2 paired s.e.) holds " + "; ".join(parts))
    results["setup"] = {
        "command": "python scripts/reproduce_li_malik.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "problems": {name: {"family": f, "kwargs": k} for name, (f, k) in PROBLEMS.items()},
        "optimizer": repr(lopt.get("li_malik_policy")),
        "policy_gradient": {"num_tasks": pg.num_tasks, "num_particles": pg.num_particles, "trunc_length":
                            pg.trunc_length, "std": pg.std, "learn_std": pg.learn_std, "gamma": pg.gamma,
                            "baseline": pg.baseline, "normalize_advantages": pg.normalize_advantages},
        "meta_steps": args.meta_steps, "meta_lr": f"{args.meta_lr} cosine-decayed to 0.1x, Adam, clip 1.0",
        "learning_rates": LEARNING_RATES, "momenta": MOMENTA, "seed": args.seed,
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU" if jax.default_backend() == "cpu"
        else jax.default_backend(),
        "date": time.strftime("%Y-%m-%d"), "total_seconds": round(time.time() - start, 1),
        "trainings_loaded_from_workdir": list(loaded_seconds),
        "loaded_trainings_seconds": round(sum(loaded_seconds.values()), 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(results, indent=1))
    table = markdown(results, args)
    write_text_atomic(str(Path(args.out).with_suffix(".md")), table)
    plot(results, args.figure, args)
    print(table)


if __name__ == "__main__":
    main()
