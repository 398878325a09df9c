"""Known transforms and labels of digital patients, for registration QA.

A study made by :func:`phantoms.make_patient` has a ``truth/`` folder beside ``study.yaml``
holding, per timepoint, the true rigid pose and optional deformation in both directions, and the
label map on the first timepoint's CT grid. Only files are read here (``dosimetry`` does not
import ``phantoms``). Conventions of those files (``truth.json`` → ``transforms.direction``):

* ``tp_to_ref``: a point of the timepoint's space → the same anatomical point of the first
  timepoint's space; with a deformation ``x_ref = R(y + d(y))``.
* ``ref_to_tp``: its inverse, ``y = D⁻¹(R⁻¹(x))``, what registration with the first timepoint as
  fixed image returns.

For another reference timepoint ``K`` the true transform from ``K``'s space to timepoint ``j``'s
is ``ref_to_tp[j] ∘ tp_to_ref[K]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.images import read_image
from dosimetry.study.manifest import Study

TRUTH_FILE = "truth.json"
GENERATOR_NAME = "rptdose.phantoms"


@dataclass(frozen=True)
class PhantomTruth:
    """The ``truth/`` folder of a digital patient."""

    folder: Path

    @cached_property
    def document(self) -> dict[str, Any]:
        """``truth.json``."""
        path = self.folder / TRUTH_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read phantom truth ({exc})") from None

    @property
    def reference_label(self) -> str:
        """Label of the timepoint the truth maps live on (the first)."""
        return str(self.document["reference"]["timepoint"])

    def _entry(self, label: str) -> dict[str, Any]:
        for tp in self.document["timepoints"]:
            if tp["label"] == label:
                return tp["transform"]
        raise InputError(f"{self.folder / TRUTH_FILE}: no timepoint {label!r} in the truth")

    def _read_tf(self, rel: str | None) -> sitk.Transform | None:
        if rel is None:
            return None
        path = self.folder / rel
        if not path.is_file():
            raise InputError(f"{path}: true transform file not found")
        if str(path).endswith(".tfm"):
            return sitk.ReadTransform(str(path))
        field = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
        return sitk.DisplacementFieldTransform(field)

    def tp_to_ref(self, label: str) -> list[sitk.Transform]:
        """Transforms of ``tp_to_ref`` in application order (first applied first)."""
        e = self._entry(label)
        out = []
        d = self._read_tf(e.get("tp_to_ref_deformation"))
        if d is not None:
            out.append(d)
        out.append(self._read_tf(e["tp_to_ref_rigid"]))
        return out

    def ref_to_tp(self, label: str) -> list[sitk.Transform]:
        """Transforms of ``ref_to_tp`` in application order (first applied first)."""
        e = self._entry(label)
        out = [self._read_tf(e["ref_to_tp_rigid"])]
        d = self._read_tf(e.get("ref_to_tp_deformation"))
        if d is not None:
            out.append(d)
        return out

    def true_transform(self, fixed: str, moving: str) -> sitk.Transform:
        """Fixed-timepoint point → moving-timepoint point (what registration should return)."""
        chain: list[sitk.Transform] = []
        if fixed != self.reference_label:
            chain += self.tp_to_ref(fixed)
        if moving != self.reference_label:
            chain += self.ref_to_tp(moving)
        if not chain:
            return sitk.Euler3DTransform()
        # CompositeTransform applies its last transform first
        return sitk.CompositeTransform(list(reversed(chain)))

    def tp_to_ref_transform(self, label: str) -> sitk.Transform:
        """``tp_to_ref`` of ``label`` as one transform (identity for the reference)."""
        if label == self.reference_label:
            return sitk.Euler3DTransform()
        return sitk.CompositeTransform(list(reversed(self.tp_to_ref(label))))

    @cached_property
    def labels(self) -> sitk.Image:
        """The true label map on the first timepoint's CT grid (uint16)."""
        return read_image(self.folder / self.document.get("labels_file", "labels.nii.gz"),
                          sitk.sitkUInt16)

    @cached_property
    def label_names(self) -> dict[int, str]:
        """Label value → name, from ``labels.json``."""
        path = self.folder / self.document.get("label_table_file", "labels.json")
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return {int(r["label"]): str(r["name"]) for r in table}

    def labels_in(self, label: str, grid: sitk.Image) -> sitk.Image:
        """The true labels as they lie in timepoint ``label``'s space, on ``grid``."""
        return sitk.Resample(self.labels, grid, self.tp_to_ref_transform(label),
                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)


def find_truth(study: Study, max_up: int = 4) -> PhantomTruth | None:
    """The phantom truth of ``study``, or None.

    Searched in the folders above the first timepoint's CT (or SPECT) path, up to ``max_up``
    levels, for ``truth/truth.json`` written by the phantom generator for the same pseudonymised
    patient and the same timepoint labels.
    """
    tp0 = study.timepoints[0]
    ref = tp0.ct or tp0.spect
    path = Path(ref.path)
    if not path.is_absolute():
        return None
    labels = [tp.label for tp in study.timepoints]
    for parent in list(path.parents)[:max_up]:
        cand = parent / "truth" / TRUTH_FILE
        if not cand.is_file():
            continue
        truth = PhantomTruth(cand.parent)
        try:
            doc = truth.document
        except InputError:
            return None
        if doc.get("generator", {}).get("name") != GENERATOR_NAME:
            return None
        if doc.get("patient_id") != study.patient_id:
            return None
        if [t.get("label") for t in doc.get("timepoints", [])] != labels:
            return None
        return truth
    return None
