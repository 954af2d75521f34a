"""A suite's report: per-task loss ratios and speedups against tuned baselines, aggregated over tasks as in rliable.

Per task (suite entry) and optimizer, over its runs (task draws x seeds):
- loss ratio against each tuned baseline: geometric mean over runs of the optimizer's final
  training loss / the baseline's on the same task draw and seed (inf if a run is not finite);
- speedup over the tuned reference (constant Adam): the median over runs of
  speedup.speedups, the project's one definition;
- diverged: a run whose final training loss is not finite or above its first steps' loss.
Across tasks: the interquartile mean of the speedups and of the loss ratios with percentile
bootstrap 95% intervals over tasks (aggregates.py), the number of tasks at or below the
tuned schedule reference (AdamW + cosine), the worst ratio to it, and the divergences.
Written into OUT beside lopt-evaluate's files (evaluation.json, table.md and curves.png, every
task's curves): suite.json (non-finite numbers as null) and suite.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from meta_train.evaluation import aggregates
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation import run as evaluation_run
from meta_train.evaluation import speedup
from meta_train.evaluation import summary
from meta_train.files import write_text_atomic
from meta_train.evaluation.report import format_markdown_table
from meta_train.evaluation.suites import Suite

SUITE_RESULT_FILE = "suite.json"
SUITE_TABLE_FILE = "suite.md"


def tuned_label(baseline: str) -> str:
    """Returns the name evaluation_summary.aggregate gives a baseline at its per-task tuned learning rate."""
    return f"{baseline} (tuned lr)"


def loss_ratio(finals: np.ndarray, reference_finals: np.ndarray) -> float:
    """Returns the geometric mean over runs of finals / reference_finals (inf if any run is not finite)."""
    ratios = np.asarray(finals, np.float64) / np.asarray(reference_finals, np.float64)
    return speedup.geometric_mean(ratios.reshape(-1))


def diverged_runs(curves: evaluate.Curves) -> int:
    """Returns how many runs end non-finite or above the mean loss of their first SPEEDUP_WINDOW steps."""
    finals = np.asarray(curves.final_losses, np.float64).reshape(-1)
    losses = np.asarray(curves.train_losses, np.float64)
    start = np.mean(losses[..., : speedup.SPEEDUP_WINDOW], axis=-1).reshape(-1)
    with np.errstate(invalid="ignore"):
        return int(np.sum(~np.isfinite(finals) | ~(finals <= np.where(np.isfinite(start), start, np.inf))))


def per_task_metrics(suite: Suite, baselines: Sequence[str], setting: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Returns, per optimizer row of one aggregated setting, its loss ratios, speedup and divergences."""
    entries = setting["optimizers"]
    reference = entries[tuned_label(suite.reference)]["curves"]
    rows = {}
    for name, entry in entries.items():
        curves = entry["curves"]
        per_run = speedup.speedups(curves.train_losses, reference.train_losses)
        rows[name] = {
            "final_train_loss": float(np.mean(curves.final_losses)),
            "loss_ratio": {b: loss_ratio(curves.final_losses, entries[tuned_label(b)]["curves"].final_losses)
                           for b in baselines},
            "speedup": float(np.median(per_run)),
            "speedup_per_run": summary.to_json(per_run),
            "diverged_runs": diverged_runs(curves),
            "runs": int(np.size(curves.final_losses)),
        }
    return rows


def finite_json(value: Any) -> Any:
    """Returns `value` (nested dicts, lists, numbers) with every non-finite float replaced by None, as strict JSON
    needs."""
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _interval_json(estimate: aggregates.IntervalEstimate) -> Dict[str, float]:
    return {"iqm": estimate.value, "low": estimate.low, "high": estimate.high}


def across_tasks(suite: Suite, baselines: Sequence[str],
                 per_task: Dict[str, Dict[str, Dict[str, Any]]]) -> Dict[str, Any]:
    """Returns, per optimizer, the IQMs with bootstrap intervals over tasks and the suite's win, worst and divergence
    counts."""
    names = list(next(iter(per_task.values())))
    out = {}
    for name in names:
        rows = [task[name] for task in per_task.values()]
        to_schedule = np.array([row["loss_ratio"][suite.schedule_reference] for row in rows])
        out[name] = {
            "speedup": _interval_json(aggregates.bootstrap_interval([row["speedup"] for row in rows])),
            "loss_ratio": {b: _interval_json(aggregates.bootstrap_interval([row["loss_ratio"][b] for row in rows]))
                           for b in baselines},
            "tasks_at_or_below_schedule_reference": int(np.sum(to_schedule <= 1.0)),
            "worst_ratio_to_schedule_reference": float(np.max(np.where(np.isnan(to_schedule), np.inf, to_schedule))),
            "tasks_with_divergence": int(sum(row["diverged_runs"] > 0 for row in rows)),
            "diverged_runs": int(sum(row["diverged_runs"] for row in rows)),
            "tasks": len(rows),
        }
    return out


def _interval_text(interval: Dict[str, float], unit: str = "") -> str:
    return f"{interval['iqm']:.3g}{unit} [{interval['low']:.3g}, {interval['high']:.3g}]"


def format_report(suite: Suite, spec: evaluation_run.Spec, per_task: Dict[str, Any], overall: Dict[str, Any],
                  steps: Dict[str, int]) -> str:
    """Returns the suite's markdown report: the across-task table, then one table of per-task numbers per metric."""
    schedule = suite.schedule_reference
    parts = [
        f"# Suite {suite.name}", "",
        f"{len(per_task)} tasks x {spec.num_tasks} task draw(s) x {len(spec.seeds)} seed(s); baselines' learning "
        f"rates tuned per task over {len(spec.learning_rates)} values {min(spec.learning_rates):g}.."
        f"{max(spec.learning_rates):g} (best final training loss). Loss ratio = geometric mean over runs of "
        "final training loss / the tuned baseline's. Speedup over tuned "
        f"{suite.reference} = {speedup.SPEEDUP_DEFINITION}; median over runs. Across tasks: interquartile "
        f"mean [95% percentile-bootstrap interval, {aggregates.BOOTSTRAP_RESAMPLES} resamples of the tasks].", "",
    ]
    headers = ["optimizer", f"speedup vs tuned {suite.reference} (IQM)", f"loss ratio vs tuned {schedule} (IQM)",
               f"tasks at or below tuned {schedule}", f"worst ratio vs {schedule}", "tasks with divergence"]
    rows = [[name, _interval_text(o["speedup"], "x"), _interval_text(o["loss_ratio"][schedule]),
             f"{o['tasks_at_or_below_schedule_reference']}/{o['tasks']}",
             f"{o['worst_ratio_to_schedule_reference']:.3g}", str(o["tasks_with_divergence"])]
            for name, o in overall.items()]
    parts += [format_markdown_table(headers, rows), ""]
    other = [b for b in spec.baselines if b != schedule]
    if other:
        headers = ["optimizer"] + [f"loss ratio vs tuned {b} (IQM)" for b in other]
        rows = [[name] + [_interval_text(o["loss_ratio"][b]) for b in other] for name, o in overall.items()]
        parts += [format_markdown_table(headers, rows), ""]
    names = list(overall)
    per_task_tables = (
        (f"Final training loss ratio to tuned {schedule}", lambda metrics: f"{metrics['loss_ratio'][schedule]:.3g}"),
        (f"Speedup over tuned {suite.reference}", lambda metrics: f"{metrics['speedup']:.2f}x"),
        ("Final training loss (mean over runs)", lambda metrics: f"{metrics['final_train_loss']:.4g}"),
    )
    for title, cell in per_task_tables:
        rows = []
        for task, by_optimizer in per_task.items():
            cells = [cell(by_optimizer[n]) + (" (diverged)" if by_optimizer[n]["diverged_runs"] else "") for n in names]
            rows.append([task, str(steps[task])] + cells)
        parts += [f"## {title}", "", format_markdown_table(["task", "steps"] + names, rows), ""]
    return "\n".join(parts)


def run_suite(suite: Suite, spec: evaluation_run.Spec, out: str | Path, *,
              show_progress: bool = True, tensorboard: str = "auto") -> Dict[str, Any]:
    """Runs (or resumes) `spec`, built from `suite`, into `out`; writes lopt-evaluate's outputs (TensorBoard events
    as `tensorboard` says: "auto", "on" or "off") plus the suite report."""
    evaluation_run.check_tensorboard(tensorboard)
    out, labels, results = evaluation_run.run_units(spec, out, show_progress=show_progress)
    combined = summary.aggregate(spec, labels, results)
    summary.write_outputs(spec, out, combined, tensorboard)
    per_task = {label: per_task_metrics(suite, spec.baselines, setting)
                for label, setting in combined["settings"].items()}
    overall = across_tasks(suite, spec.baselines, per_task)
    steps = {label: setting["num_steps"] for label, setting in combined["settings"].items()}
    table = format_report(suite, spec, per_task, overall, steps)
    holds_out = {label: entry.holds_out for label, entry in zip(steps, suite.entries)}
    result = {"suite": suite.name, "speedup_definition": speedup.SPEEDUP_DEFINITION,
              "bootstrap_resamples": aggregates.BOOTSTRAP_RESAMPLES, "confidence": aggregates.CONFIDENCE,
              "steps": steps, "holds_out": holds_out, "across_tasks": overall, "per_task": per_task}
    write_text_atomic(out / SUITE_RESULT_FILE, json.dumps(finite_json(result), indent=1, allow_nan=False))
    write_text_atomic(out / SUITE_TABLE_FILE, table)
    written: List[str] = [summary.RESULT_FILE, summary.TABLE_FILE, summary.PLOT_FILE, SUITE_RESULT_FILE,
                          SUITE_TABLE_FILE]
    return {"out": str(out), "table": table, "across_tasks": overall, "per_task": per_task, "written": written}
