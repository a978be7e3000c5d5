"""notebooks check: thin notebooks (no def, no plt., short cells) and executed copies that render their figures.

Tiny synthetic notebooks built with nbformat; nothing is executed.
"""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from diffusion_lib.cli import main
from diffusion_lib.course.notebooks import (KERNELSPEC, MAX_CELL_LINES, check_executed_notebook, check_notebook,
                                            executed_notebook_problems, thin_notebook_problems)


def notebook(*cells):
    """A clean notebook: objectives, a parameters cell, the given cells, questions."""
    parameters = new_code_cell('PROFILE = "smoke"\nSEED = 0', metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[new_markdown_cell("# Title\n\n## Learning objectives\n- one"), parameters, *cells,
                             new_markdown_cell("## Questions\n1. why?")])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb


def write(nb, path):
    nbformat.write(nb, path)
    return path


LONG = "\n".join(f"x{i} = {i}" for i in range(MAX_CELL_LINES + 1))


def test_a_thin_notebook_is_clean(tmp_path):
    nb = notebook(new_code_cell("from diffusion_lib import viz\nfig = viz.plot_schedules(1000)\nfig"),
                  new_code_cell("\n".join(f"x{i} = {i}" for i in range(MAX_CELL_LINES)) + "\n\n\n"))
    assert thin_notebook_problems(nb) == []
    assert check_notebook(write(nb, tmp_path / "ok.ipynb")) == []


@pytest.mark.parametrize("source, message", [
    ("def helper(x):\n    return x", "cell 2 defines a function (`def`)"),
    ("x = 1\n  async def later():\n    pass", "cell 2 defines a function (`def`)"),
    ("fig, ax = plt.subplots()", "cell 2 calls `plt.` directly"),
    (LONG, f"cell 2 has {MAX_CELL_LINES + 1} non-blank lines; at most {MAX_CELL_LINES}"),
])
def test_fat_cells_are_reported(tmp_path, source, message):
    nb = notebook(new_code_cell(source))
    problems = thin_notebook_problems(nb)
    assert len(problems) == 1 and problems[0].startswith(message)
    assert any(p.startswith(message) for p in check_notebook(write(nb, tmp_path / "fat.ipynb")))


def test_parameters_and_exercise_cells_and_markdown_are_exempt():
    nb = notebook(new_code_cell("def schedule(t):\n    return plt.plot(t)\n" + LONG, metadata={"tags": ["exercise"]}),
                  new_markdown_cell("```python\ndef shown(): plt.show()\n```\n" + LONG))
    nb.cells[1].source += "\n" + LONG.replace(" = ", "=")  # a long parameters cell is fine
    assert thin_notebook_problems(nb) == []


def figure_output(text, image=False):
    data = {"text/plain": text}
    if image:
        data["image/png"] = "iVBORw0KGgo="
    return new_output("display_data", data=data)


def test_figures_rendered_as_text_are_errors_in_executed_notebooks(tmp_path):
    rendered = new_code_cell("fig", outputs=[figure_output("<Figure size 640x480 with 1 Axes>", image=True)])
    as_text = new_code_cell("fig", outputs=[figure_output("<Figure size 940x540 with 40 Axes>")])
    plain = new_code_cell("1 + 1", outputs=[new_output("execute_result", data={"text/plain": "2"},
                                                       execution_count=1)])
    assert executed_notebook_problems(notebook(rendered, plain)) == []
    problems = executed_notebook_problems(notebook(rendered, as_text, plain))
    assert problems == ["cell 3: figure rendered as text (<Figure size 940x540 with 40 Axes>)"]
    assert check_executed_notebook(write(notebook(as_text), tmp_path / "run.ipynb")) == [
        "cell 2: figure rendered as text (<Figure size 940x540 with 40 Axes>)"]
    with pytest.raises(FileNotFoundError):
        check_executed_notebook(tmp_path / "none.ipynb")


def test_notebooks_check_command(tmp_path, capsys):
    write(notebook(new_code_cell("x = 1")), tmp_path / "01_ok.ipynb")
    write(notebook(new_code_cell("fig = plt.figure()")), tmp_path / "02_fat.ipynb")
    assert main(["notebooks", "check", "01", "--dir", str(tmp_path)]) == 0
    assert main(["notebooks", "check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "01_ok.ipynb: ok" in out and "calls `plt.` directly" in out
    executed = tmp_path / "executed"
    executed.mkdir()
    write(notebook(new_code_cell("fig", outputs=[figure_output("<Figure size 1x1 with 1 Axes>")])),
          executed / "03_run.ipynb")
    assert main(["notebooks", "check", "--executed", str(executed)]) == 1
    assert "figure rendered as text" in capsys.readouterr().out
