"""The library's imports: no circle (top-level imports only), every module loads first in a fresh interpreter,
config is a leaf that reads YAML without torch, and its lists of names agree with the modules that implement them."""

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffusion_lib"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__main__.py"}


def top_level_imports(name: str, path: Path, inside_functions: bool = False) -> set[str]:
    """The library modules ``name`` imports when it is loaded (statements outside functions), or anywhere
    (``inside_functions``: also the imports a function makes when it runs)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not inside_functions:
                continue  # runs later, not at import
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                if base.split(".")[0] == "diffusion_lib":
                    for alias in child.names:  # ``from . import distributed`` imports a submodule
                        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "diffusion_lib")
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # loading already
    edges = set()
    for target in found:  # importing a.b.c loads the packages a and a.b first
        parts = target.split(".")
        edges.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
    return edges - own_packages


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_import_graph_of_top_level_imports_has_no_cycle():
    graph = {name: top_level_imports(name, path) for name, path in MODULES.items()}
    assert "diffusion_lib.artifacts" in graph["diffusion_lib.checkpoint"]  # the graph sees relative imports
    assert cycles(graph) == []


# A function-local import that closes a circle only hides it (checkpoint -> config -> loggers -> checkpoint did,
# and nbcourse -> gradebook -> nbcourse in the course tools).
def test_no_function_local_import_hides_an_import_cycle():
    graph = {name: top_level_imports(name, path, inside_functions=True) for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_config_and_artifacts_import_only_what_the_house_plan_allows():
    graph = {name: top_level_imports(name, path) for name, path in MODULES.items()}
    assert graph["diffusion_lib.config"] == set()  # a leaf: no other module of the library
    assert graph["diffusion_lib.artifacts"] <= {"diffusion_lib", "diffusion_lib.atomic", "diffusion_lib._lazy"}
    assert "diffusion_lib.checkpoint" not in graph["diffusion_lib.loggers"]


def test_every_module_loads_first_in_a_fresh_interpreter():
    script = f"""
import importlib, json, sys
names, failed, skipped = {sorted(MODULES)!r}, {{}}, {{}}
for name in names:
    for loaded in [m for m in sys.modules if m == "diffusion_lib" or m.startswith("diffusion_lib.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing = getattr(error, "name", None) or ""
        (skipped if missing and not missing.startswith("diffusion_lib") else failed)[name] = repr(error)
    except Exception as error:
        failed[name] = repr(error)
print(json.dumps({{"failed": failed, "skipped": skipped}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert len(result["skipped"]) <= 3, result["skipped"]  # optional packages only (e.g. diffusers)


def test_reading_a_yaml_config_imports_no_torch():
    script = ("import sys\nfrom diffusion_lib.config import load_config\n"
              "config = load_config('configs/digits_cfg.yaml', ['sampling.sampler=ddpm', 'diffusion.beta_schedule=cosine'])\n"
              "assert config.sampling.sampler == 'ddpm' and config.diffusion.beta_schedule == 'cosine'\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'diffusion_lib')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "['diffusion_lib', 'diffusion_lib._lazy', 'diffusion_lib.config']"


def test_the_config_names_agree_with_the_modules_that_implement_them():
    from diffusion_lib import config, diffusion, loggers, models, sampling, schedules

    assert tuple(sampling.SAMPLERS) == config.SAMPLER_NAMES  # the function table, keyed in config's order
    assert diffusion.PREDICTION_TYPES is config.PREDICTION_TYPES  # one tuple, imported: no copy to keep in sync
    assert sampling.TIMESTEP_SPACINGS is config.TIMESTEP_SPACINGS
    assert sampling.VARIANCE_TYPES is config.VARIANCE_TYPES
    assert config.MODEL_KINDS == tuple(models.KINDS)
    assert loggers.LOGGER_NAMES is config.LOGGER_NAMES
    builtin = {name: tuple(list(inspect.signature(fn).parameters)[1:]) for name, fn in schedules._SCHEDULES.items()
               if fn.__module__ == schedules.__name__}
    assert config.BUILTIN_SCHEDULES == builtin


def test_a_schedule_registered_at_run_time_is_accepted_by_the_config():
    import numpy as np

    from diffusion_lib.config import load_config
    from diffusion_lib.schedules import _SCHEDULES, register_schedule

    @register_schedule("test_imports_flat")
    def flat(num_train_timesteps: int, level: float = 0.01) -> np.ndarray:
        return np.full(num_train_timesteps, level)

    try:
        config = load_config(None, ["diffusion.beta_schedule=test_imports_flat", "diffusion.schedule_kwargs={level: 0.02}"])
        assert config.diffusion.schedule_kwargs == {"level": 0.02}
        with pytest.raises(ValueError, match=r"schedule_kwargs \['s'\] are not arguments of the 'test_imports_flat' "
                                             r"schedule; accepted: \['level'\]"):
            load_config(None, ["diffusion.beta_schedule=test_imports_flat", "diffusion.schedule_kwargs={s: 1}"])
    finally:
        del _SCHEDULES["test_imports_flat"]


def test_every_model_kind_builds_its_network_objective_and_schedule():
    import torch

    from diffusion_lib.config import load_config
    from diffusion_lib.models import KINDS, build_network
    from diffusion_lib.objectives import build_objective, build_schedule

    for kind, entry in KINDS.items():
        config = load_config(None, [f"model.kind={kind}", "model.base_channels=8", "model.channel_mults=[1]",
                                    "model.attention_levels=[]", "model.norm_groups=4", "diffusion.num_train_timesteps=10"])
        network = build_network(config, channels=1, image_size=8, num_classes=10)
        objective = build_objective(config, torch.device("cpu"))
        assert type(objective).__name__ == entry.objective
        assert (build_schedule(config) is not None) == entry.uses_schedule == (objective.schedule is not None)
        assert type(entry.build(network.config)) is type(network)
    with pytest.raises(ValueError, match=r"unknown model kind 'gan'; accepted: \['unet', 'vae'\]"):
        build_network(type("C", (), {"model": type("M", (), {"kind": "gan"})})(), 1, 8, 10)
