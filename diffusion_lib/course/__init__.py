"""The course around the library: region display for the notebooks and the notebook runner.

    from diffusion_lib.course.regions import region_source      # notebook 04 shows the # Start/# End code
    from diffusion_lib.course.notebooks import run_notebook     # papermill runner, `notebooks run|check|list`

``course`` imports the library, never the reverse (house plan: nothing in the library imports
``course`` or ``cli``). This ``__init__`` imports nothing, so the CLI can build its parser without torch.
"""
