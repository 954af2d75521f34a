"""Executes the tutorials in docs/tutorials/ and renders each one as markdown with its printed output and figures.

A tutorial is a jupytext "percent" script: `# %% [markdown]` cells whose lines start with `# `,
and `# %%` code cells. It opens as a notebook in Jupyter with jupytext, and it runs as a plain
script. This runner executes the code cells in order in one namespace, in a scratch working
directory, with matplotlib's Agg backend; after each cell it saves every open figure as a PNG
and captures what the cell printed.

    python scripts/run_tutorials.py                      # run all, render to docs/tutorials/rendered/
    python scripts/run_tutorials.py docs/tutorials/03_meta_training.py
    python scripts/run_tutorials.py --out /tmp/rendered  # run all, render elsewhere (what the test does)

Each tutorial runs in its own process, so one tutorial's JAX caches and memory do not reach the next.
Exit status is non-zero when any tutorial raises; the error names the tutorial and the cell.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import List, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = REPO_ROOT / "docs" / "tutorials"
RENDERED = TUTORIALS / "rendered"
CELL_MARKER = re.compile(r"^# %%(?P<rest>.*)$")


class Cell(NamedTuple):
    """One cell of a percent-format script: its kind ("markdown" or "code") and its text."""

    kind: str
    text: str


class ExecutedCell(NamedTuple):
    """A cell after execution: what it printed and the file names of the figures it drew."""

    cell: Cell
    output: str
    figures: List[str]


def parse_cells(source: str) -> List[Cell]:
    """Returns the cells of a percent-format script; text before the first marker is dropped (the header)."""
    cells: List[Cell] = []
    kind, lines = None, []
    for line in source.splitlines():
        match = CELL_MARKER.match(line)
        if match:
            if kind is not None:
                cells.append(_finish(kind, lines))
            kind, lines = ("markdown" if "[markdown]" in match.group("rest") else "code"), []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        cells.append(_finish(kind, lines))
    return [cell for cell in cells if cell.text.strip()]


def _finish(kind: str, lines: List[str]) -> Cell:
    if kind == "markdown":
        lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
    return Cell(kind, "\n".join(lines).strip("\n"))


def execute(path: Path, figure_dir: Path, figure_prefix: str) -> List[ExecutedCell]:
    """Runs the code cells of tutorial `path` in order in one namespace; returns every cell with its output.

    Raises RuntimeError naming the cell when a cell raises.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__", "__file__": str(path)}
    executed: List[ExecutedCell] = []
    figure_count = 0
    for index, cell in enumerate(parse_cells(path.read_text())):
        if cell.kind == "markdown":
            executed.append(ExecutedCell(cell, "", []))
            continue
        captured = io.StringIO()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            with contextlib.redirect_stdout(captured):
                exec(compile(cell.text, f"{path.name} cell {index + 1}", "exec"), namespace)
        except Exception as error:
            sys.stdout.write(captured.getvalue())
            traceback.print_exc()
            raise RuntimeError(f"{path.name}: cell {index + 1} raised {type(error).__name__}: {error}") from error
        print(f"  {path.name} cell {index + 1}: {time.perf_counter() - wall:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU", file=sys.stderr)
        figures = []
        for number in plt.get_fignums():
            figure_count += 1
            name = f"{figure_prefix}_{figure_count}.png"
            plt.figure(number).savefig(figure_dir / name, dpi=90, bbox_inches="tight")
            figures.append(name)
        plt.close("all")
        executed.append(ExecutedCell(cell, captured.getvalue(), figures))
    return executed


def render(title_path: Path, executed: List[ExecutedCell], seconds: float, figure_link: str) -> str:
    """Returns the markdown rendering of an executed tutorial: prose, code, printed output and figures."""
    parts = [f"<!-- Rendered by scripts/run_tutorials.py from docs/tutorials/{title_path.name} "
             f"({seconds:.0f} s on this machine). Edit the source, not this file. -->"]
    for item in executed:
        if item.cell.kind == "markdown":
            parts.append(item.cell.text)
            continue
        parts.append(f"```python\n{item.cell.text}\n```")
        if item.output.strip():
            parts.append(f"```text\n{item.output.rstrip()}\n```")
        parts.extend(f"![{name}]({figure_link}/{name})" for name in item.figures)
    return "\n\n".join(parts) + "\n"


def run_one(path: Path, out: Path) -> float:
    """Executes tutorial `path` in a scratch directory and writes OUT/<name>.md and OUT/figures/; returns seconds."""
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for stale in figure_dir.glob(f"{path.stem}_*.png"):
        stale.unlink()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"tutorial_{path.stem}_") as scratch:
        previous = os.getcwd()
        os.chdir(scratch)
        try:
            executed = execute(path.resolve(), figure_dir.resolve(), path.stem)
        finally:
            os.chdir(previous)
    seconds = time.perf_counter() - start
    (out / f"{path.stem}.md").write_text(render(path, executed, seconds, "figures"))
    return seconds


def tutorial_paths() -> List[Path]:
    """Returns the tutorials in reading order (their file names start with their number)."""
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def main(argv=None) -> int:
    """Runs the named tutorials (default: all), each in its own process, and renders them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tutorials", nargs="*", type=Path, help="tutorial files (default: every docs/tutorials/NN_*.py)")
    parser.add_argument("--out", type=Path, default=RENDERED, help="folder for the rendered markdown and figures")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    paths = args.tutorials or tutorial_paths()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"run_tutorials: no such tutorial: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.in_process:
        seconds = run_one(paths[0], args.out)
        print(f"{paths[0].name}: ran in {seconds:.1f} s -> {args.out / (paths[0].stem + '.md')}")
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    failed = []
    for path in paths:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--in-process", "--out", str(args.out),
                               str(path.resolve())], env=env)
        if done.returncode != 0:
            failed.append(path.name)
    if failed:
        print(f"run_tutorials: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
