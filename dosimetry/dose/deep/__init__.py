"""Deep dose engine: a CNN ensemble that corrects the DVK dose towards Monte Carlo.

* :mod:`~dosimetry.dose.deep.model` — features and the network;
* :mod:`~dosimetry.dose.deep.data` — MC targets for training patches;
* :mod:`~dosimetry.dose.deep.train` — ensemble training, σ calibration, held-out metrics;
* :mod:`~dosimetry.dose.deep.build` — the whole recipe behind ``rptdose train dose``;
* this module — the shipped weights (``weights/deepdose_<nuclide>.pt``) and their loading.

The image-level engine is :func:`dosimetry.dose.engines.dose_deep` (``--engine deep``).
Importing this package does not import torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosimetry.errors import InputError

__all__ = ["DeepDoseModel", "load_model", "save_model", "weights_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Format of the weight files; bump when the features or network change incompatibly.
FORMAT_VERSION = 1
#: SHA-256 of the shipped weight files (``weights/README.md`` records how each was made).
SHIPPED_SHA256: dict[str, str] = {
    "deepdose_lu177.pt": "0c9a5d28cd473010a72de8e22a1cd9e0d3ed8f7947f095d437dc429024868401",
    "deepdose_i131.pt": "4c87805dc17f60c304e0e61781292160e70aa01cf9ce439ae581e0fa1c7bf9b0",
}


def _slug(nuclide: str) -> str:
    from dosimetry.nuclides import get_nuclide

    name = get_nuclide(nuclide).name  # "Lu-177"
    return re.sub(r"[^a-z0-9]", "", name.lower())


def weights_path(nuclide: str) -> Path:
    """Path of the shipped weights for ``nuclide`` (``weights/deepdose_lu177.pt``)."""
    return WEIGHTS_DIR / f"deepdose_{_slug(nuclide)}.pt"


@dataclass(frozen=True, eq=False)
class DeepDoseModel:
    """A loaded ensemble with its σ calibration and training record."""

    nuclide: str
    members: tuple[Any, ...]
    alpha: float
    beta: float
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""
    #: σ scale for organ/VOI means (model errors are correlated between voxels)
    alpha_voi: float = 0.0


def save_model(path: str | Path, nuclide: str, members, alpha: float, beta: float,
               metadata: dict[str, Any], *, alpha_voi: float | None = None) -> Path:
    """Write an ensemble (state dicts in float32) atomically."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT_VERSION, "nuclide": nuclide, "alpha": float(alpha),
        "alpha_voi": float(alpha if alpha_voi is None else alpha_voi),
        "beta": float(beta), "config": members[0].config(),
        "members": [{k: v.detach().cpu().float() for k, v in m.state_dict().items()}
                    for m in members],
        "metadata": metadata,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_model(nuclide: str, path: str | Path | None = None, device: str = "cpu"
               ) -> DeepDoseModel:
    """Load the ensemble for ``nuclide`` (the shipped weights unless ``path`` is given).

    Raises
    ------
    InputError
        No weights for this nuclide, an unreadable file, or weights of another nuclide.
    """
    import torch

    from dosimetry.dose.deep.model import DoseCorrectionNet
    from dosimetry.nuclides import get_nuclide

    want = get_nuclide(nuclide).name
    p = Path(path) if path is not None else weights_path(want)
    if not p.is_file():
        raise InputError(
            f"no deep dose weights for {want} at {p}; train them with "
            f"`rptdose train dose --nuclide {want}` or use --engine dvk or mc")
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if path is None and SHIPPED_SHA256.get(p.name) not in (None, digest):
        raise InputError(f"{p}: the shipped weights were modified (SHA-256 {digest[:12]}…, "
                         f"expected {SHIPPED_SHA256[p.name][:12]}…); reinstall rptdose or "
                         "pass retrained weights explicitly")
    try:
        import io

        # weights_only: tensors and plain containers only; the one class allowed besides is
        # torch's version string, recorded in the metadata of the files we write
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if blob.get("format") != FORMAT_VERSION:
            raise InputError(f"{p}: weight format {blob.get('format')!r}, expected "
                             f"{FORMAT_VERSION}; retrain with `rptdose train dose`")
        members = []
        for sd in blob["members"]:
            net = DoseCorrectionNet(**blob["config"])
            net.load_state_dict(sd)
            members.append(net.to(device).eval())
    except InputError:
        raise
    except Exception as exc:  # corrupt or foreign file: say which
        raise InputError(f"{p}: not a readable deep dose weight file ({exc})") from None
    if get_nuclide(blob["nuclide"]).name != want:
        raise InputError(f"{p}: weights are for {blob['nuclide']}, not {want}")
    return DeepDoseModel(want, tuple(members), float(blob["alpha"]), float(blob["beta"]),
                         dict(blob.get("metadata", {})), digest, str(p),
                         float(blob.get("alpha_voi", blob["alpha"])))
