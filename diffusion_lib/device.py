"""Choosing the torch device: ``"auto"`` picks CUDA, then Apple MPS, then the CPU."""

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
