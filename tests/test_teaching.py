"""region_source: the notebooks show the library's # Start / # End regions, read from the source."""

import ast
import json
import re
from pathlib import Path

import pytest

from diffusion_lib.course import annotations as ann
from diffusion_lib.course.regions import region_source, show_region
from diffusion_lib.course.tasks import load_course
from diffusion_lib.diffusion import training_loss
from diffusion_lib.sampling import ddim_sample, ddpm_sample, dpm_solver_sample, predict_x0_and_eps

ROOT = Path(__file__).resolve().parents[1]
GRADED = {"training_loss", "predict_x0_and_eps", "ddpm_sample", "ddim_sample", "dpm_solver_sample"}


@pytest.mark.parametrize("func, line", [
    (training_loss, "model_output = model(x_t, t, y)"),
    (ddpm_sample, "x = mean + variance.sqrt() * z"),
    (ddim_sample, "x = abar_prev.sqrt() * x0 + direction + sigma * z"),
    (dpm_solver_sample, "x = sigma_next / sigma_t * x_t - alpha_next * torch.expm1(-h) * D"),
    (predict_x0_and_eps, "eps = eps_from_x0(x_t, x0, abar_t)"),
])
def test_region_is_the_code_between_the_markers(func, line):
    region = region_source(func)
    assert line in region
    assert "# Start" not in region and "# End" not in region
    assert not region.startswith((" ", "\t"))  # dedented
    ast.parse(region)  # a complete, runnable block of statements
    assert region_source(func, dedent=False).startswith("    ")


def _no_markers():
    return 1


def _two_starts():
    # Start
    x = 1
    # Start
    # End
    return x


def test_missing_or_repeated_markers_and_unreadable_source_raise():
    with pytest.raises(ValueError, match="one '# Start' line followed by one '# End'"):
        region_source(_no_markers)
    with pytest.raises(ValueError, match="found 2 start and 1 end"):
        region_source(_two_starts)
    with pytest.raises(ValueError, match="cannot read the source"):
        region_source(len)


def test_show_region_renders_the_region_as_highlighted_python():
    code = show_region(ddpm_sample)
    assert code.data == region_source(ddpm_sample)
    assert "<div" in code._repr_html_()  # the notebook shows it highlighted, not as text


@pytest.mark.parametrize("notebook", ["homework/part2_reverse_process.ipynb",
                                      "notebooks/04_reverse_process_walkthrough.ipynb"])
def test_every_region_task_2b_grades_is_shown(notebook):
    """Graded is taught: the part 2 homework and notebook 04 show every # Start/# End region that 2b grades."""
    graded = _graded_regions()
    cells = json.loads((ROOT / notebook).read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    shown = {name.split(".")[-1] for name in re.findall(r"show_region\(([\w.]+)\)", code)}
    assert graded == GRADED
    assert graded <= shown, f"{notebook} does not show {sorted(graded - shown)}"


def _graded_regions() -> set[str]:
    task = load_course(ROOT).task("2b")
    return {region.key.split("::")[1].split("#")[0]
            for rel in task.files for region in ann.find_regions((ROOT / rel).read_text(), rel)}


def test_the_2b_task_text_names_every_graded_region():
    cells = json.loads((ROOT / "homework/part2_reverse_process.ipynb").read_text())["cells"]
    task_text = next("".join(c["source"]) for c in cells if "**2b" in "".join(c["source"]))
    named = set(re.findall(r"`(\w+)`", task_text))
    assert _graded_regions() <= named, f"the 2b text does not name {sorted(_graded_regions() - named)}"
