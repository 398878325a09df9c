"""Optional backend: TotalSegmentator (Wasserthal et al. 2023, doi:10.1148/ryai.230024).

TotalSegmentator is not a dependency of rptdose: it is imported inside :func:`segment_totalseg`,
and when it (or its weights) is missing a :class:`~dosimetry.errors.DependencyError` says what to
install and where the weights must be. Its ``total`` task classes are mapped onto our names by
:data:`~dosimetry.segmentation.names.TOTALSEGMENTATOR_TO_OURS` (lobes merged into lungs, vertebrae
and ribs merged); classes without an entry there are dropped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import DependencyError, InputError
from dosimetry.segmentation.labelmap import LabelEntry, LabelMap, LabelTable, label_image
from dosimetry.segmentation.names import TOTALSEGMENTATOR_TO_OURS, StructureKind

#: Environment variable TotalSegmentator v2 reads for its home folder (weights under
#: ``<home>/nnunet/results``); v1 read ``TOTALSEG_WEIGHTS_PATH`` for the weights themselves.
HOME_ENV = "TOTALSEG_HOME_DIR"
WEIGHTS_ENV_V1 = "TOTALSEG_WEIGHTS_PATH"

INSTALL_HINT = ("install it with `pip install TotalSegmentator` and make its weights available: "
                f"they are downloaded on first use into ~/.totalsegmentator; on a machine "
                f"without network set {HOME_ENV} (v2) or {WEIGHTS_ENV_V1} (v1) to a folder "
                "holding them")

ProgressFn = Callable[[str, float], None]


def weights_folder() -> Path:
    """Where TotalSegmentator looks for its weights (from the environment or the default)."""
    if os.environ.get(WEIGHTS_ENV_V1):
        return Path(os.environ[WEIGHTS_ENV_V1])
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".totalsegmentator"))
    return home / "nnunet" / "results"


def _device(device: str) -> str:
    d = device.strip().lower()
    if d == "cpu":
        return "cpu"
    if d.startswith("cuda"):
        return "gpu" + d[4:]  # TotalSegmentator names CUDA devices gpu, gpu:1, …
    raise InputError(f"device {device!r} is not one TotalSegmentator runs on (cpu, cuda, cuda:N)")


def segment_totalseg(ct: sitk.Image, device: str = "cpu", *, fast: bool = False,
                     progress: ProgressFn | None = None) -> LabelMap:
    """Segment a CT with TotalSegmentator's ``total`` task and map the classes to ours.

    Parameters
    ----------
    ct : SimpleITK.Image
        CT in HU.
    device : str
        ``cpu``, ``cuda`` or ``cuda:N``.
    fast : bool
        Use TotalSegmentator's 3 mm model (much faster on CPU, coarser).

    Returns
    -------
    LabelMap
        On the CT's grid, labels 1…n in the order of first appearance in the class table.

    Raises
    ------
    DependencyError
        TotalSegmentator is not installed or its weights folder does not exist.
    """
    try:
        from totalsegmentator.map_to_binary import class_map
        from totalsegmentator.python_api import totalsegmentator
    except ImportError as exc:
        raise DependencyError(f"the totalsegmentator backend needs TotalSegmentator, which is "
                              f"not installed ({exc}); {INSTALL_HINT}") from None
    folder = weights_folder()
    if not folder.is_dir():
        raise DependencyError(f"TotalSegmentator weights not found at {folder}; {INSTALL_HINT}")
    report = progress or (lambda step, frac: None)
    dev = _device(device)
    with tempfile.TemporaryDirectory(prefix="rptdose-totalseg-") as tmp:
        src = Path(tmp) / "ct.nii.gz"
        dst = Path(tmp) / "labels.nii.gz"
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(src))
        report("running TotalSegmentator", 0.1)
        totalsegmentator(input=src, output=dst, ml=True, task="total", fast=fast, device=dev,
                         quiet=True)
        ts = sitk.ReadImage(str(dst))
    ts = sitk.Resample(ts, ct, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor,
                       0, sitk.sitkUInt16)
    return map_totalseg_labels(sitk.GetArrayFromImage(ts), dict(class_map["total"]), ct)


def map_totalseg_labels(ts_labels: np.ndarray, ts_classes: dict[int, str],
                        reference: sitk.Image) -> LabelMap:
    """Map a TotalSegmentator multi-label array (its class ids) to our names on ``reference``.

    ``ts_classes`` is TotalSegmentator's id → class-name table for the task.
    """
    ours: list[str] = []
    lut = np.zeros(max(ts_classes, default=0) + 1, dtype=np.uint16)
    for tid, tname in sorted(ts_classes.items()):
        name = TOTALSEGMENTATOR_TO_OURS.get(tname)
        if name is None:
            continue
        if name not in ours:
            ours.append(name)
        lut[tid] = ours.index(name) + 1
    arr = np.asarray(ts_labels, dtype=np.int64)
    arr = np.where((arr >= 0) & (arr < lut.size), arr, 0)
    out = lut[arr]
    present = set(np.unique(out).tolist()) - {0}
    entries = tuple(LabelEntry(i + 1, n, StructureKind.ORGAN) for i, n in enumerate(ours)
                    if i + 1 in present)
    if not entries:
        raise InputError("TotalSegmentator found none of the structures rptdose uses")
    return LabelMap(label_image(out, reference), LabelTable(entries), source="TotalSegmentator")
