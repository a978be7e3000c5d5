"""Measurements the notebooks plot: one call per experiment, returning tables and tensors.

- :mod:`.forward`: how long each noise schedule keeps the data structured (notebook 02);
- :mod:`.guidance`: guidance strength against class accuracy and diversity (notebook 05);
- :mod:`.samplers`: samplers x steps x eta x guidance from one starting noise, timed and scored (notebook 07);
- :mod:`.runs`: run folders compared: config differences, losses, scores, speed; loss curves and grids (03, 05, 06);
- :mod:`.sweep`: a grid over config keys, each run in its own folder, resumable, ending with the comparison.

Every name is re-exported here and loaded on first use, so ``import diffusion_lib.experiments`` is cheap.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "forward": ("MEASURES", "timestep_grid", "correlation", "ks_to_normal", "sliced_w2_to_normal", "structure_table",
                "structure_horizon", "schedule_summary"),
    "guidance": ("guidance_sweep", "SweepResult", "within_class_diversity"),
    "samplers": ("SamplerSetting", "SamplerSweep", "settings_grid", "sampler_sweep", "pipeline_sweep", "seed_spread"),
    "runs": ("RunRecord", "load_run", "find_runs", "compare_runs", "config_differences", "plot_runs",
             "format_comparison", "evaluation_path"),
    "sweep": ("parse_grid", "grid_points", "run_name", "run_sweep"),
})
