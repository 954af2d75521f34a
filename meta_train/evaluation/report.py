"""End-of-run evaluation report: trained vs. initial learned optimizer vs. per-task tuned baseline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np

import lopt
from meta_train import tensorboard as tensorboard_lib
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation.speedup import SPEEDUP_DEFINITION, speedups
from meta_train.files import write_text_atomic

EVAL_FILE = "eval.json"
PLOT_FILE = "eval_curves.png"
EVAL_BOARD_FOLDER = "eval"


def _row(name: str, curves: evaluate.Curves, reference: np.ndarray) -> Dict[str, Any]:
    finals = curves.final_losses
    return {
        "optimizer": name,
        "mean_final_loss": float(np.mean(finals)),
        "median_final_loss": float(np.median(finals)),
        "mean_final_normalized": float(np.mean(curves.final_normalized)),
        "tasks_better_than_tuned_baseline": int(np.sum(finals < reference)),
        "final_losses": [float(x) for x in finals],
    }


def format_table(rows, num_tasks: int) -> str:
    """Returns the evaluation rows as a fixed-width text table."""
    header = f"{'optimizer':<28}{'mean final':>12}{'median final':>14}{'normalised':>12}{'beats tuned':>13}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['optimizer']:<28}{row['mean_final_loss']:>12.4f}{row['median_final_loss']:>14.4f}"
            f"{row['mean_final_normalized']:>12.4f}{row['tasks_better_than_tuned_baseline']:>9d}/{num_tasks:<3d}"
        )
    return "\n".join(lines)


def format_markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Returns a GitHub-flavoured markdown table of `rows` (cells converted with str)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _runs(losses: np.ndarray) -> np.ndarray:
    losses = np.asarray(losses, np.float64)
    return np.where(np.isfinite(losses), losses, np.nan).reshape(-1, losses.shape[-1])


def _draw(axis: Any, named_losses: Dict[str, np.ndarray], steps: Optional[np.ndarray], ylabel: str, title: str) -> None:
    for name, losses in named_losses.items():
        runs = _runs(losses)
        x = np.arange(1, runs.shape[1] + 1) if steps is None else np.maximum(np.asarray(steps), 1)
        with np.errstate(all="ignore"):
            axis.plot(x, np.nanmean(runs, axis=0), label=name)
            axis.fill_between(x, np.nanmin(runs, axis=0), np.nanmax(runs, axis=0), alpha=0.15)
    axis.set_yscale("log")
    axis.set_xlabel("inner step")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7)


def plot_grid(panels: Dict[str, Dict[str, evaluate.Curves]], path: Path,
              valid_steps: Optional[Dict[str, np.ndarray]] = None, max_columns: Optional[int] = None) -> None:
    """Saves a PNG with one column per panel: training loss (and validation loss, if recorded) against step.

    Lines are means over every leading axis of the curves (e.g. seeds and tasks), bands min to max; log scale.
    With `max_columns`, panels wrap onto further rows after that many columns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid_steps = valid_steps or {}
    with_valid = any(np.size(valid_steps.get(title, [])) for title in panels)
    per_panel = 2 if with_valid else 1
    columns = min(len(panels), max_columns or len(panels))
    rows = per_panel * -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows), squeeze=False)
    for empty in range(len(panels), columns * (rows // per_panel)):
        for offset in range(per_panel):
            axes[per_panel * (empty // columns) + offset, empty % columns].set_visible(False)
    for index, (title, named_curves) in enumerate(panels.items()):
        row, column = per_panel * (index // columns), index % columns
        _draw(axes[row, column], {n: c.train_losses for n, c in named_curves.items()}, None, "training loss (batch)",
              title)
        steps = valid_steps.get(title)
        if with_valid and steps is not None and np.size(steps):
            valid = {n: c.valid_losses for n, c in named_curves.items() if c.valid_losses is not None}
            _draw(axes[row + 1, column], valid, steps, "validation loss", title)
        elif with_valid:
            axes[row + 1, column].set_visible(False)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


def plot_curves(named_curves: Dict[str, evaluate.Curves], path: Path, title: str,
                valid_steps: Optional[np.ndarray] = None) -> None:
    """Saves mean training loss against step (with min-max band over tasks), log scale, as a PNG; validation below if given."""
    plot_grid({title: named_curves}, path, None if valid_steps is None else {title: valid_steps})


def evaluate_run(config: ml_collections.ConfigDict, run: Any, meta_params: Any, workdir: Path) -> Dict[str, Any]:
    """Evaluates trained and initial meta-params and the tuned baseline on held-out tasks; prints and saves a report."""
    settings = config.eval
    if isinstance(run.family, (list, tuple)):
        print(f"evaluating on the first family of the mixture, {run.family[0].name}")
        run = run._replace(family=run.family[0])
    keys = evaluate.held_out_task_keys(settings.seed, settings.num_tasks)
    optimizer = run.learned_optimizer
    initial = optimizer.init(jax.random.split(jax.random.key(config.seed))[0])
    trained_curves = evaluate.train_curves(run.family, optimizer, meta_params, keys, settings.num_steps, settings.final_batches)
    initial_curves = evaluate.train_curves(run.family, optimizer, initial, keys, settings.num_steps, settings.final_batches)
    baseline = lopt.get(settings.baseline)
    tuned = evaluate.tuned_baseline_curves(
        run.family, baseline, settings.learning_rates, keys, settings.num_steps, settings.final_batches
    )
    reference = tuned["curves"].final_losses
    baseline_name = f"{settings.baseline} (lr tuned per task)"
    rows = [
        _row(f"{optimizer.name} (meta-trained)", trained_curves, reference),
        _row(f"{optimizer.name} (initial)", initial_curves, reference),
        _row(baseline_name, tuned["curves"], reference),
    ]
    per_task_speedups = speedups(trained_curves.train_losses, tuned["curves"].train_losses)
    table = format_table(rows, settings.num_tasks)
    print(f"\nheld-out evaluation: {settings.num_tasks} tasks of {run.family.name}, {settings.num_steps} steps, "
          f"final = mean training loss over {settings.final_batches} batches")
    print(table)
    print(f"{settings.baseline} learning rates picked per task: {tuned['learning_rates']}"
          f" ({tuned['num_at_grid_edge']} at the grid's edge)")
    print(f"speedup over tuned {settings.baseline}: median {np.median(per_task_speedups):.2f}x, "
          f"reached on {int(np.sum(per_task_speedups > 0))}/{settings.num_tasks} tasks "
          f"(speedup = {SPEEDUP_DEFINITION})")
    result = {
        "family": run.family.name,
        "num_tasks": settings.num_tasks,
        "num_steps": settings.num_steps,
        "rows": rows,
        "baseline_learning_rates": tuned["learning_rates"],
        "baseline_learning_rate_grid": list(settings.learning_rates),
        "speedup_to_tuned_baseline_final": [float(x) for x in per_task_speedups],
        "speedup_definition": SPEEDUP_DEFINITION,
        "curves": {
            "meta_trained": trained_curves.train_losses.tolist(),
            "initial": initial_curves.train_losses.tolist(),
            "tuned_baseline": tuned["curves"].train_losses.tolist(),
        },
    }
    write_text_atomic(workdir / EVAL_FILE, json.dumps(result))
    plot_curves(
        {rows[0]["optimizer"]: trained_curves, rows[1]["optimizer"]: initial_curves, baseline_name: tuned["curves"]},
        workdir / PLOT_FILE,
        f"held-out {run.family.name} tasks",
    )
    print(f"wrote {workdir / EVAL_FILE} and {workdir / PLOT_FILE}")
    if "tensorboard" in config and tensorboard_lib.enabled(config.tensorboard.mode):
        write_eval_tensorboard(workdir / tensorboard_lib.FOLDER / EVAL_BOARD_FOLDER, run.family.name, {
            "meta_trained": trained_curves, "initial": initial_curves, "tuned_baseline": tuned["curves"]})
    return {"table": table, "rows": [{k: v for k, v in r.items() if k != "final_losses"} for r in rows]}


def write_eval_tensorboard(folder: Path, family_name: str, curves: Dict[str, evaluate.Curves]) -> None:
    """Writes the end-of-run evaluation as TensorBoard runs `folder/meta_trained`, `/initial` and `/tuned_baseline`,
    each with scalar `heldout/FAMILY/train_loss`: the mean training loss over held-out tasks against the inner step."""
    shutil.rmtree(folder, ignore_errors=True)  # one evaluation per finished run, rewritten whole like eval.json
    for run_name, run_curves in curves.items():
        losses = np.asarray(run_curves.train_losses, np.float64)
        mean = np.nanmean(losses.reshape(-1, losses.shape[-1]), axis=0)
        with tensorboard_lib.EventWriter(folder / run_name) as board:
            board.curve(f"heldout/{family_name}/train_loss", mean, np.arange(mean.shape[0]))
