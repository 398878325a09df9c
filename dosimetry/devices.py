"""Torch device names given by users (``--device``), checked once for every package."""

from __future__ import annotations

from dosimetry.errors import InputError


def check_torch_device(device: str) -> str:
    """The canonical name of a usable torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …).

    Raises
    ------
    InputError
        ``device`` is not a torch device name, or CUDA is asked for and not available here.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device ({exc}); use cpu or "
                         "cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here; use "
                         "--device cpu")
    return str(dev)
