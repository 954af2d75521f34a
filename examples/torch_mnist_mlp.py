"""Trains a PyTorch MLP on MNIST with a shipped lopt optimizer and with tuned torch.optim.Adam; plots and times both.

    python examples/torch_mnist_mlp.py --data-dir ../shared/data

Reads the MNIST idx files from `--data-dir` (or $LOPT_DATA_DIR)/mnist, downsamples the images
to `--image-size` (8 by default, the image size the shipped optimizers were meta-trained on) by
area averaging, and trains a ReLU MLP (hidden 32, 32) with batches of 128 drawn identically for
every optimizer. Adam's learning rate is picked from `--adam-lrs` by the lowest final training
loss (mean of the last tenth of the run). Writes `--out` .png (training-loss curves), .md (final
losses, test accuracy and wall time per step) and .json (the curves of the optimizer and of tuned Adam). Needs only torch, numpy
and matplotlib: no JAX, no torchvision.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

import lopt.torch

IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """Returns the uint8 array stored in a gzipped idx file (the original MNIST format)."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


def load_mnist(data_dir: Path, image_size: int) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Returns {"train", "test"}: (images [N, image_size**2] standardised with the train statistics, labels [N])."""
    folder = data_dir / "mnist"
    missing = [name for pair in IDX_FILES.values() for name in pair if not (folder / name).is_file()]
    if missing:
        sys.exit(f"error: {folder} lacks {', '.join(missing)}; pass --data-dir (a folder holding mnist/)")
    splits = {}
    for split, (images_file, labels_file) in IDX_FILES.items():
        images = torch.from_numpy(read_idx(folder / images_file).astype(np.float32) / 255.0)[:, None]
        if image_size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="area")
        splits[split] = (images.flatten(1), torch.from_numpy(read_idx(folder / labels_file).astype(np.int64)))
    mean, std = splits["train"][0].mean(), splits["train"][0].std()
    return {split: ((x - mean) / std, y) for split, (x, y) in splits.items()}


def make_model(num_inputs: int, hidden: List[int], seed: int) -> torch.nn.Module:
    """Returns a ReLU MLP num_inputs -> hidden... -> 10 with PyTorch's default initialisation under `seed`."""
    torch.manual_seed(seed)
    layers, width = [], num_inputs
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def train(make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer], data, hidden: List[int], steps: int,
          batch_size: int, seed: int) -> Dict[str, object]:
    """Trains one model; returns its per-step training losses, test accuracy and per-step wall times."""
    x, y = data["train"]
    model = make_model(x.shape[1], hidden, seed)
    optimizer = make_optimizer(model)
    batches = torch.Generator().manual_seed(1000 + seed)
    losses, step_seconds, update_seconds = [], [], []
    for _ in range(steps):
        index = torch.randint(len(x), (batch_size,), generator=batches)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        before_update = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        losses.append(float(loss.detach()))
        step_seconds.append(end - start)
        update_seconds.append(end - before_update)
    with torch.no_grad():
        test_x, test_y = data["test"]
        accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    return {"losses": losses, "test_accuracy": accuracy, "step_ms": 1e3 * statistics.median(step_seconds),
            "update_ms": 1e3 * statistics.median(update_seconds)}


def final_loss(losses: List[float]) -> float:
    """Returns the mean training loss over the last tenth of a run."""
    return float(np.mean(losses[-max(1, len(losses) // 10):]))


def smooth(values: List[float], window: int) -> np.ndarray:
    """Returns the running mean of `values` over `window` steps (shorter at the start)."""
    cumulative = np.cumsum(np.insert(np.asarray(values, np.float64), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def main() -> None:
    """Parses the command line, trains every optimizer on every seed and writes the figure and tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("LOPT_DATA_DIR", ""),
                        help="folder holding mnist/ (default $LOPT_DATA_DIR)")
    parser.add_argument("--optimizer", default="small_fc_lopt_fmnist8", help="shipped optimizer name or .lopt file")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/torch_mnist_mlp", help="output path without suffix")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data_dir:
        sys.exit("error: pass --data-dir or set LOPT_DATA_DIR (a folder holding mnist/)")
    data = load_mnist(Path(args.data_dir), args.image_size)
    run = lambda make: [train(make, data, args.hidden, args.steps, args.batch_size, seed) for seed in args.seeds]

    results = {args.optimizer: run(lambda model: lopt.torch.load(args.optimizer, model.parameters()))}
    adam_runs = {lr: run(lambda model, lr=lr: torch.optim.Adam(model.parameters(), lr=lr)) for lr in args.adam_lrs}
    best_lr = min(adam_runs, key=lambda lr: np.mean([final_loss(r["losses"]) for r in adam_runs[lr]]))
    adam_name = f"Adam (tuned lr {best_lr:g})"
    results[adam_name] = adam_runs[best_lr]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_figure(out.with_suffix(".png"), results, args)
    rows = ["| optimizer | final train loss | test accuracy | ms per step | ms in optimizer.step | step / Adam's |",
            "|---|---|---|---|---|---|"]
    adam_step_ms = np.mean([r["step_ms"] for r in results[adam_name]])
    for name, runs in results.items():
        mean = lambda key: np.mean([r[key] for r in runs])
        rows.append(f"| {name} | {np.mean([final_loss(r['losses']) for r in runs]):.4f} | {mean('test_accuracy'):.4f} "
                    f"| {mean('step_ms'):.2f} | {mean('update_ms'):.2f} | {mean('step_ms') / adam_step_ms:.2f} |")
    torch_threads = torch.get_num_threads()
    note = (f"MNIST {args.image_size}x{args.image_size}, MLP {'-'.join(map(str, args.hidden))}, batch "
            f"{args.batch_size}, {args.steps} steps, seeds {' '.join(map(str, args.seeds))}; Adam lr from "
            f"{', '.join(f'{lr:g}' for lr in args.adam_lrs)}; median wall time per step on {torch_threads} torch "
            f"threads, torch {torch.__version__}.")
    command = "python examples/torch_mnist_mlp.py " + " ".join(sys.argv[1:])
    out.with_suffix(".md").write_text("\n".join([f"`{command}`", "", note, "", *rows, ""]))
    for runs in results.values():
        for r in runs:
            r["losses"] = [round(loss, 5) for loss in r["losses"]]
    adam_grid = {f"{lr:g}": [final_loss(r["losses"]) for r in runs] for lr, runs in adam_runs.items()}
    out.with_suffix(".json").write_text(json.dumps({"command": command, "settings": vars(args), "adam_lr": best_lr,
                                                    "adam_final_losses_by_lr": adam_grid, "results": results}))
    print(note)
    print("\n".join(rows))
    print(f"wrote {out.with_suffix('.png')}, {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def write_figure(path: Path, results: Dict[str, list], args: argparse.Namespace) -> None:
    """Draws each optimizer's training loss (running mean over 20 steps; mean over seeds, min..max shaded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for name, runs in results.items():
        curves = np.stack([smooth(r["losses"], 20) for r in runs])
        steps = np.arange(1, curves.shape[1] + 1)
        axes.plot(steps, curves.mean(0), label=name)
        axes.fill_between(steps, curves.min(0), curves.max(0), alpha=0.2)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (20-step running mean)")
    axes.set_title(f"PyTorch MLP on MNIST {args.image_size}x{args.image_size}, {len(args.seeds)} seeds")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
