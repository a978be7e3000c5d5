"""Lazy package exports (PEP 562): a package lists its public names by submodule; each loads on first use.

``import diffusion_lib`` (and ``python -m diffusion_lib --help``) must not import torch, so every package
``__init__`` re-exports its names through :func:`lazy_exports` instead of importing its submodules.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping, Sequence


def lazy_exports(package: str, homes: Mapping[str, Sequence[str]],
                 extra: Sequence[str] = ()) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """Build a package's ``__getattr__``, ``__dir__`` and ``__all__`` from ``{submodule: names}``.

    Args:
        package: the package's ``__name__``.
        homes: submodule (relative, e.g. "scores") -> the public names it defines.
        extra: names defined in the package itself that ``__all__`` also lists (e.g. "__version__").

    Returns:
        ``(__getattr__, __dir__, __all__)``. ``__getattr__(name)`` imports the submodule holding ``name``,
        caches the value in the package namespace (later look-ups skip it) and returns it; unknown names
        raise AttributeError, as for any module.

    Raises:
        ValueError: a name listed under two submodules.
    """
    home_of: dict[str, str] = {}
    for module, names in homes.items():
        for name in names:
            if name in home_of:
                raise ValueError(f"{package}: {name!r} is listed under both {home_of[name]!r} and {module!r}")
            home_of[name] = module
    public = [*extra, *sorted(home_of)]

    def __getattr__(name: str):
        if name not in home_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home_of[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public) | set(homes))

    return __getattr__, __dir__, public
