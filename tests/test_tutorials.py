"""The tutorials in docs/tutorials/ execute, draw their figures, and their checked-in renderings match their sources."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = REPO_ROOT / "scripts" / "run_tutorials.py"
TUTORIALS = sorted((REPO_ROOT / "docs" / "tutorials").glob("[0-9][0-9]_*.py"))


def _runner():
    spec = importlib.util.spec_from_file_location("run_tutorials", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_seven_tutorials_in_reading_order():
    assert [p.name[:2] for p in TUTORIALS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes_and_draws_its_figures(tutorial, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(RUNNER), "--out", str(tmp_path), str(tutorial)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rendered = (tmp_path / f"{tutorial.stem}.md").read_text()
    figures = sorted((tmp_path / "figures").glob(f"{tutorial.stem}_*.png"))
    assert figures, f"{tutorial.name} drew no figure"
    for figure in figures:
        assert f"(figures/{figure.name})" in rendered
        assert figure.stat().st_size > 5_000


def test_checked_in_renderings_match_their_sources():
    runner = _runner()
    for tutorial in TUTORIALS:
        rendered = runner.RENDERED / f"{tutorial.stem}.md"
        assert rendered.is_file(), f"{tutorial.name} is not rendered: run python scripts/run_tutorials.py"
        text = rendered.read_text()
        for cell in runner.parse_cells(tutorial.read_text()):
            block = f"```python\n{cell.text}\n```" if cell.kind == "code" else cell.text
            assert block in text, (f"{rendered.name} is older than {tutorial.name}: "
                                   f"run python scripts/run_tutorials.py {tutorial.relative_to(REPO_ROOT)}")


def test_runner_parses_percent_cells_and_names_the_failing_cell(tmp_path):
    runner = _runner()
    script = tmp_path / "99_broken.py"
    script.write_text("# header\n# %% [markdown]\n# # Title\n# some prose\n\n# %%\nx = 1\nprint(x + 1)\n\n"
                      "# %%\nraise ValueError('bad step')\n")
    cells = runner.parse_cells(script.read_text())
    assert [c.kind for c in cells] == ["markdown", "code", "code"]
    assert cells[0].text == "# Title\nsome prose"
    with pytest.raises(RuntimeError, match=r"99_broken.py: cell 3 raised ValueError: bad step"):
        runner.execute(script, tmp_path, "broken")


def test_runner_renders_output_and_figures(tmp_path):
    runner = _runner()
    script = tmp_path / "98_plot.py"
    script.write_text("# %%\nimport matplotlib.pyplot as plt\nprint('hello')\nplt.plot([1, 2, 3])\n")
    executed = runner.execute(script, tmp_path, "plot")
    assert executed[0].output == "hello\n" and executed[0].figures == ["plot_1.png"]
    markdown = runner.render(script, executed, 1.0, "figures")
    assert "```text\nhello\n```" in markdown and "![plot_1.png](figures/plot_1.png)" in markdown
