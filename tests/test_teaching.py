"""region_source: the notebooks show the library's # Start / # End regions, read from the source."""

import ast

import pytest

from diffusion_lib.diffusion import training_loss
from diffusion_lib.sampling import ddim_sample, ddpm_sample
from diffusion_lib.course.regions import region_source, show_region


@pytest.mark.parametrize("func, line", [
    (training_loss, "model_output = model(x_t, t, y)"),
    (ddpm_sample, "x = mean + variance.sqrt() * z"),
    (ddim_sample, "x = abar_prev.sqrt() * x0 + direction + sigma * z"),
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
