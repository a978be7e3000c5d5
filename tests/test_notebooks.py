"""The notebook suite: stored notebooks are clean, the runner works, every notebook runs in the smoke profile.

Every notebook in notebooks/ is picked up automatically. The execution tests are marked
``notebook`` (select them with ``-m notebook``, skip them with ``-m "not notebook"``).
"""

import configparser
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

import diffusion_lib
from diffusion_lib import cli
from diffusion_lib.config import load_config
from diffusion_lib.course.notebooks import (FIGURE_AS_TEXT, KERNELSPEC, PARAMETERS_TAG, check_notebook,
                                            executed_notebook_problems, find_notebooks, format_table, run_notebook,
                                            run_notebooks)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]


def _strip_keys() -> str:
    """The extra metadata keys the committed git filter strips (.gitconfig, read without git)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".gitconfig")
    return config['filter "nbstripout"']["extrakeys"]


def _notebook(*cells, kernelspec=KERNELSPEC) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = dict(kernelspec)
    return nb


def _write(nb, path: Path) -> Path:
    nbformat.write(nb, path)
    return path


def _clean_cells(body: str = "print(PROFILE)"):
    params = new_code_cell('PROFILE = "smoke"\nOUTPUT_DIR = "out"')
    params.metadata["tags"] = ["parameters"]
    return [new_markdown_cell("# Title\n\n**Learning objectives**: ..."), params, new_code_cell(body),
            new_markdown_cell("## Questions\n1. Why?")]


# ----- hygiene of the stored notebooks ------------------------------------------------------------


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_notebook_is_clean(path):
    assert check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_switches_on_inline_figures(path):
    """The library draws matplotlib Figures without pyplot: only ``%matplotlib inline`` makes the kernel show them
    as PNG images (without it they print as "<Figure size ...>" text)."""
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG not in c.metadata.get("tags", []))
    assert first.source.startswith("%matplotlib inline"), first.source[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_configs_named_by_a_notebook_exist_and_load(path):
    names = set(re.findall(r"configs/([\w.]+\.yaml)", path.read_text()))
    names |= {f"nb{path.name[:2]}_{kind}_{profile}.yaml" for kind in
              re.findall(r"configs/nb\d\d_(\w+)_\{PROFILE\}", path.read_text()) for profile in ("smoke", "full")}
    for name in names:  # a notebook's own configs (nbNN_*) are named for their file
        config = load_config(ROOT / "configs" / name)
        assert config.name == name.removesuffix(".yaml") or not name.startswith("nb")


def test_stored_notebooks_are_unchanged_by_nbstripout():
    """What the git filter would commit is what is stored (one nbstripout call for all notebooks)."""
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", "--extra-keys", _strip_keys(),
                           *map(str, NOTEBOOKS)], capture_output=True, text=True)
    assert done.returncode == 0, f"not stripped (fix: python -m nbstripout --extra-keys '{_strip_keys()}' " \
                                 f"notebooks/*.ipynb):\n{done.stdout}{done.stderr}"


def test_git_routes_notebooks_through_the_committed_filter():
    assert "*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text()
    config = configparser.ConfigParser()
    config.read(ROOT / ".gitconfig")
    assert "nbstripout" in config['filter "nbstripout"']["clean"]
    assert {"metadata.papermill", "cell.metadata.papermill"} <= set(_strip_keys().split())


def test_the_filter_keeps_the_parameters_tag_and_drops_outputs_and_papermill_metadata(tmp_path):
    cells = _clean_cells()
    cells[2].outputs = [new_output("stream", name="stdout", text="smoke\n")]
    cells[2].execution_count = 3
    cells[1].metadata["papermill"] = {"duration": 1.0}
    cells[1].metadata["execution"] = {"iopub.status.busy": "2024-01-01"}
    nb = _notebook(*cells)
    nb.metadata["papermill"] = {"parameters": {"PROFILE": "smoke"}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.0"}
    path = _write(nb, tmp_path / "executed.ipynb")
    assert len(check_notebook(path)) >= 3
    subprocess.run([sys.executable, "-m", "nbstripout", "--extra-keys", _strip_keys(), str(path)], check=True)
    stripped = nbformat.read(path, as_version=4)
    assert stripped.cells[1].metadata == {"tags": ["parameters"]}
    assert stripped.cells[2].outputs == [] and stripped.cells[2].execution_count is None
    assert set(stripped.metadata) == {"kernelspec"}
    assert check_notebook(path) == []


def test_check_notebook_names_each_problem(tmp_path):
    cells = _clean_cells()
    second = new_code_cell("SEED = 0")
    second.metadata["tags"] = ["parameters"]
    cells[2].outputs = [new_output("stream", name="stdout", text="x")]
    bad = _notebook(new_markdown_cell("# no objectives"), *cells[1:3], second,
                    kernelspec={"name": "conda-env", "display_name": "X", "language": "python"})
    problems = "\n".join(check_notebook(_write(bad, tmp_path / "bad.ipynb")))
    for expected in ("outputs", "2 cells are tagged 'parameters'", "kernelspec", "Learning objectives", "Questions"):
        assert expected in problems
    (tmp_path / "junk.ipynb").write_text("{not json")
    assert check_notebook(tmp_path / "junk.ipynb")[0].startswith("not a valid notebook")
    with pytest.raises(FileNotFoundError):
        check_notebook(tmp_path / "missing.ipynb")


# ----- the runner ---------------------------------------------------------------------------------


def test_find_notebooks_by_prefix_or_name(tmp_path):
    for name in ("01_a.ipynb", "02_b.ipynb", "12_c.ipynb"):
        _write(_notebook(*_clean_cells()), tmp_path / name)
    names = lambda found: [p.name for p in found]
    assert names(find_notebooks(None, tmp_path)) == ["01_a.ipynb", "02_b.ipynb", "12_c.ipynb"]
    assert names(find_notebooks(["02"], tmp_path)) == ["02_b.ipynb"]
    assert names(find_notebooks(["12_c.ipynb", "0"], tmp_path)) == ["01_a.ipynb", "02_b.ipynb", "12_c.ipynb"]
    with pytest.raises(ValueError, match="no notebook matches '3'"):
        find_notebooks(["3"], tmp_path)
    with pytest.raises(FileNotFoundError):
        find_notebooks(None, tmp_path / "nowhere")


def test_runner_uses_this_interpreter_and_injects_parameters(tmp_path):
    body = ("import sys, pathlib\n"
            "import diffusion_lib\n"
            "pathlib.Path(OUTPUT_DIR).mkdir(parents=True, exist_ok=True)\n"
            "(pathlib.Path(OUTPUT_DIR) / 'facts.txt').write_text("
            "'\\n'.join([sys.executable, PROFILE, str(EXTRA), diffusion_lib.__file__]))")
    good = _write(_notebook(*_clean_cells(body)), tmp_path / "good.ipynb")
    result = run_notebook(good, tmp_path / "out", "full", parameters={"EXTRA": 7})
    assert result.status == "ok", result.error
    executable, profile, extra, package = (tmp_path / "out" / "good" / "facts.txt").read_text().splitlines()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert (profile, extra) == ("full", "7")
    assert Path(package).resolve() == Path(diffusion_lib.__file__).resolve()  # the caller's copy of the library
    executed = nbformat.read(result.output, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert check_notebook(good) == []  # the stored notebook is untouched
    with pytest.raises(ValueError, match="unknown profile"):
        run_notebook(good, tmp_path / "out", "medium")


def test_runner_reports_the_first_error_and_the_cli_exits_non_zero(tmp_path, capsys):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _write(_notebook(*_clean_cells("raise ValueError('broken on purpose')")), notebooks / "01_bad.ipynb")
    _write(_notebook(*_clean_cells("x = 1")), notebooks / "02_good.ipynb")
    results = run_notebooks(None, "smoke", tmp_path / "out", notebooks)
    assert [(r.name, r.status) for r in results] == [("01_bad.ipynb", "failed"), ("02_good.ipynb", "ok")]
    assert "ValueError: broken on purpose" in results[0].error
    table = format_table(results)
    assert "broken on purpose" in table and "1/2 ok" in table
    code = cli.main(["notebooks", "run", "01", "--dir", str(notebooks), "--output", str(tmp_path / "cli")])
    assert code == 1
    out = capsys.readouterr().out
    assert "01_bad.ipynb" in out and "failed" in out and "02_good" not in out
    assert cli.main(["notebooks", "check", "--dir", str(notebooks)]) == 0


# ----- the suite in the smoke profile -------------------------------------------------------------


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_the_smoke_profile(path, smoke_run):
    result, _ = smoke_run(path)
    assert result.status == "ok", f"{path.name} failed after {result.seconds:.0f} s: {result.error}"
    executed = nbformat.read(result.output, as_version=4)
    code_cells = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    assert not any(o.output_type == "error" for c in code_cells for o in c.outputs)
    # every figure is an image: no "<Figure size ...>" text in place of a picture, and pictures were drawn
    assert executed_notebook_problems(executed) == []
    printed = [i for i, c in enumerate(executed.cells) if c.cell_type == "code" for o in c.outputs
               if o.output_type == "stream" and FIGURE_AS_TEXT in o.get("text", "")]
    assert printed == [], f"cells {printed} print a figure as text"
    assert _outputs(result)[1] > 0, "no image/png output: the notebook shows no figure"


def _outputs(result) -> tuple[str, int]:
    """All text a notebook printed, and how many images it showed."""
    executed = nbformat.read(result.output, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    return text, sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.notebook
def test_notebook_01_shows_the_fail_fast_message_and_its_tables(smoke_run):
    result, output_dir = smoke_run(ROOT / "notebooks" / "01_data_acquisition_and_analysis.ipynb")
    assert result.status == "ok", result.error
    text, images = _outputs(result)
    assert "flowers102: not found" in text  # offline, the full-profile source says what to do
    assert images >= 8
    assert (output_dir / "before_after_summary.csv").exists()


@pytest.mark.notebook
def test_notebook_07_says_what_it_would_load_and_writes_its_sweep(smoke_run):
    result, output_dir = smoke_run(ROOT / "notebooks" / "07_sampler_exploration.ipynb")
    assert result.status == "ok", result.error
    text, images = _outputs(result)
    assert "google/ddpm-cifar10-32" in text and images >= 5
    table = (output_dir / "sweep.csv").read_text()
    assert "ddim" in table and "diffusers:euler" in table and "fid" in table
    assert (output_dir / "diffusers_model" / "model_index.json").is_file()
