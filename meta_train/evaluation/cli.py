"""`lopt-evaluate`: trained optimizers against per-task tuned baselines on task families; resumable, one-line errors."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional

from meta_train import tensorboard as tensorboard_lib
from meta_train.evaluation import run as evaluation_run
from meta_train.evaluation import suite_report, suites
from meta_train.cli import USER_ERRORS, _fail
from meta_train.folder_lock import folder_lock

DEFAULT_NUM_STEPS = 200


def parser() -> argparse.ArgumentParser:
    """Returns the argument parser of `lopt-evaluate`."""
    p = argparse.ArgumentParser(
        prog="lopt-evaluate",
        description="Evaluate exported learned optimizers against hand-designed baselines whose learning rate is "
                    "tuned per task. Writes OUT/evaluation.json, OUT/curves.png and OUT/table.md (with --suite also "
                    "OUT/suite.json and OUT/suite.md); rerunning the same command resumes.",
    )
    p.add_argument("--optimizers", nargs="*", default=[], metavar="FILE",
                   help="export files (.lopt) or pretrained:NAME")
    p.add_argument("--export", action="append", default=[], metavar="FILE",
                   help="one export file (.lopt) or pretrained:NAME (repeatable; joins --optimizers)")
    p.add_argument("--suite", default=None,
                   help="named held-out suite with its own tasks, baselines and learning-rate grid: "
                        f"{', '.join(sorted(suites.SUITES))}")
    p.add_argument("--budget-scale", type=float, default=None,
                   help="with --suite: multiply every task's step budget (e.g. 0.1 for a quick run; default 1)")
    p.add_argument("--family", action="append", default=[], help="registered task family (repeatable)")
    p.add_argument("--family-kwargs", action="append", default=[], metavar="JSON",
                   help="constructor arguments as a JSON object: one for all families or one per --family")
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help=f"named task (repeatable): {', '.join(sorted(evaluation_run.NAMED_TASKS))}")
    p.add_argument("--config", help="meta-training config file: evaluate on its task family, or each family of its mixture "
                        "(without its reparameterisation), with its data_dir")
    p.add_argument("--baselines", nargs="*", default=None,
                   help="hand-designed baselines: adam adam_cosine adamw adamw_cosine muon schedule_free_adamw sgd "
                        "sgd_momentum (or sgd+momentum) rmsprop (default adam, or the suite's)")
    p.add_argument("--learning-rates", nargs="+", type=float, default=None,
                   help="grid each baseline's learning rate is picked from, per task (default 1e-4..1, 9 values, "
                        "or the suite's)")
    p.add_argument("--reference", default=None,
                   help="baseline that speedups are measured against (default adam, else the first baseline)")
    p.add_argument("--tune-on", choices=("train", "valid"), default="train",
                   help="final loss that picks the baselines' learning rates")
    p.add_argument("--num-steps", type=int, default=None,
                   help=f"inner steps per run (default {DEFAULT_NUM_STEPS}, or the config's eval.num_steps)")
    p.add_argument("--num-tasks", type=int, default=None, help="held-out tasks per family (default 8, or the suite's)")
    p.add_argument("--task-seed", type=int, default=None,
                   help="seed of the held-out task draw (default 10000, or the config's eval.seed)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds for initialisation and batches (default 0, or the suite's)")
    p.add_argument("--valid-every", type=int, default=10, help="validation loss every this many steps (0: off)")
    p.add_argument("--final-batches", type=int, default=8, help="batches averaged for final losses")
    p.add_argument("--data-dir", default="", help="folder with mnist/, fashion_mnist/, cifar10/ (default $LOPT_DATA_DIR)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tensorboard", choices=tensorboard_lib.SETTINGS, default="auto",
                   help="write mean curves as TensorBoard events to OUT/tensorboard/: auto (when tensorboardX is "
                        "installed), on or off (default auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _json_object(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise evaluation_run.EvaluationError(f"--family-kwargs is not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise evaluation_run.EvaluationError(f"--family-kwargs must be a JSON object, got {text!r}")
    return value


def _settings(args: argparse.Namespace) -> List[evaluation_run.Setting]:
    kwargs = [_json_object(text) for text in args.family_kwargs]
    if kwargs and len(kwargs) not in (1, len(args.family)):
        raise evaluation_run.EvaluationError(
            f"give --family-kwargs once or once per --family ({len(args.family)}), got {len(kwargs)}")
    if kwargs and not args.family:
        raise evaluation_run.EvaluationError("--family-kwargs needs --family")
    num_steps = args.num_steps or DEFAULT_NUM_STEPS
    names, settings = [], []
    for i, family in enumerate(args.family):
        names.append(family)
        settings.append(evaluation_run.Setting(family, family, kwargs[min(i, len(kwargs) - 1)] if kwargs else {}, num_steps))
    for task in args.task:
        names.append(task)
        settings.append(evaluation_run.named_setting(task, num_steps))
    if args.config:
        from meta_train import config as config_lib

        from meta_train.build import config_kwargs, mixture_entries

        config = config_lib.load_config(args.config)
        mixture = len(config.task.mixture) > 0
        for entry_name, entry in mixture_entries(config):
            # judged on the plain tasks: a config's reparameterisation augments training, not the evaluation
            names.append(entry_name if mixture else entry.family)
            settings.append(evaluation_run.Setting(
                entry_name, entry.family, json.loads(json.dumps(config_kwargs(entry.get("kwargs", {})))),
                args.num_steps or int(config.eval.num_steps)))
        args.data_dir = args.data_dir or config.data_dir
        if args.task_seed is None:
            args.task_seed = int(config.eval.seed)
    labels = evaluation_run.unique_labels(names)
    return [evaluation_run.Setting(label, s.family, s.family_kwargs, s.num_steps) for label, s in zip(labels, settings)]


def suite_spec_from_args(args: argparse.Namespace) -> evaluation_run.Spec:
    """Returns the evaluation of `--suite NAME` with the command line's optimizers and overrides."""
    suite = suites.get_suite(args.suite)
    clashing = [flag for flag, given in (("--family", args.family), ("--task", args.task), ("--config", args.config),
                                         ("--num-steps", args.num_steps), ("--reference", args.reference),
                                         ("--tune-on valid", args.tune_on != "train")) if given]
    if clashing:
        raise evaluation_run.EvaluationError(
            f"--suite sets the tasks, budgets and reference itself; drop {', '.join(clashing)} (scale budgets with "
            "--budget-scale)")
    baselines = None if args.baselines is None else [evaluation_run.canonical_baseline(b) for b in args.baselines]
    return suites.suite_spec(
        suite, [*args.optimizers, *args.export],
        budget_scale=1.0 if args.budget_scale is None else args.budget_scale,
        data_dir=args.data_dir, learning_rates=args.learning_rates, baselines=baselines, num_tasks=args.num_tasks,
        seeds=args.seeds, task_seed=10_000 if args.task_seed is None else args.task_seed,
        final_batches=args.final_batches)


def spec_from_args(args: argparse.Namespace) -> evaluation_run.Spec:
    """Returns the evaluation described by parsed command-line arguments."""
    if args.suite is not None:
        return suite_spec_from_args(args)
    if args.budget_scale is not None:
        raise evaluation_run.EvaluationError("--budget-scale needs --suite (use --num-steps otherwise)")
    settings = _settings(args)
    names = ["adam"] if args.baselines is None else args.baselines
    baselines = tuple(evaluation_run.canonical_baseline(b) for b in names)
    reference = args.reference or ("adam" if "adam" in baselines or not baselines else baselines[0])
    return evaluation_run.Spec(
        optimizers=(*args.optimizers, *args.export),
        settings=tuple(settings),
        baselines=baselines,
        learning_rates=tuple(evaluation_run.DEFAULT_LEARNING_RATES if args.learning_rates is None
                             else args.learning_rates),
        seeds=(0,) if args.seeds is None else tuple(args.seeds),
        num_tasks=8 if args.num_tasks is None else args.num_tasks,
        task_seed=10_000 if args.task_seed is None else args.task_seed,
        valid_every=args.valid_every,
        final_batches=args.final_batches,
        tune_on=args.tune_on,
        reference=evaluation_run.canonical_baseline(reference),
        data_dir=args.data_dir,
    )


def main(argv: Optional[List[str]] = None) -> int:
    """`lopt-evaluate --optimizers A.lopt ... --family NAME | --task NAME | --config FILE | --suite NAME --out DIR`."""
    args = parser().parse_args(argv)
    try:
        evaluation_run.check_tensorboard(args.tensorboard, "--tensorboard")
        spec = spec_from_args(args)
        with folder_lock(args.out, "lopt-evaluate"):
            if args.suite is not None:
                result = suite_report.run_suite(suites.get_suite(args.suite), spec, args.out,
                                                show_progress=not args.no_progress, tensorboard=args.tensorboard)
            else:
                result = evaluation_run.run_evaluation(spec, args.out, show_progress=not args.no_progress,
                                                       tensorboard=args.tensorboard)
    except USER_ERRORS as err:
        return _fail(err)
    print(result["table"])
    out = result["out"]
    if args.suite is not None:
        print(f"wrote {', '.join(f'{out}/{name}' for name in result['written'])}")
    else:
        events = (f" (TensorBoard events in {out}/{tensorboard_lib.FOLDER}/)"
                  if tensorboard_lib.enabled(args.tensorboard) else "")
        print(f"wrote {out}/{evaluation_run.RESULT_FILE}, {out}/{evaluation_run.PLOT_FILE} and "
              f"{out}/{evaluation_run.TABLE_FILE}{events}")
    return 0
