"""Devices: ``"auto"`` picks CUDA, then Apple MPS, then the CPU; seeded noise that is the same on every device."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` or a device string into a ``torch.device``.

    Args:
        device: "auto", "cpu", "cuda", "cuda:1", "mps", or a torch.device.

    Returns:
        The device; "auto" gives cuda if available, else mps if available, else cpu.

    Raises:
        ValueError: an unparseable name, or an explicitly requested device that is not available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'auto' or 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available here; use 'auto' or 'cpu'")
    return resolved


def randn(shape, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``.

    Drawing on the generator's device makes a seed give the same numbers whatever device the
    model runs on (a CPU generator gives CPU-identical samples on CUDA).

    Args:
        shape: output shape.
        generator: optional ``torch.Generator``; None uses the global RNG.
        device: where the result should live (defaults to the generator's device).

    Returns:
        float32 tensor of ``shape``.
    """
    source = generator.device if generator is not None else (device or "cpu")
    return torch.randn(shape, generator=generator, device=source).to(device or source)
