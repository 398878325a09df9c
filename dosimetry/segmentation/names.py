"""Standard structure names and the tables that map other names onto them.

Our names follow TotalSegmentator (Wasserthal et al. 2023, Radiology: Artificial Intelligence
5:e230024, doi:10.1148/ryai.230024) class names of its ``total`` task where it has the structure
(``liver``, ``kidney_left``, ``urinary_bladder`` …). Where TotalSegmentator splits a structure
we keep it whole (``lung_left`` = its three lobes ``lung_upper_lobe_left``,
``lung_lower_lobe_left``; ``vertebrae`` = ``vertebrae_C1`` … ``vertebrae_S1``); where it has none
we use the digital patients' name (``red_marrow``).

Every label in a label map is an :class:`~dosimetry.segmentation.labelmap.LabelEntry` with one of
these names (or a lesion name ``lesion_1`` …) and a :class:`StructureKind`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


class StructureKind(StrEnum):
    """What a labelled structure is for the dosimetry: a normal organ/tissue or a lesion."""

    ORGAN = "organ"
    LESION = "lesion"


#: Organs the built-in CT model segments, in class order (class 0 is background). These are the
#: source organs and organs at risk of Lu-177 peptide/PSMA and I-131 therapy that a trunk CT shows
#: and the digital patients carry; ``stomach`` and ``heart`` (blood pool) are segmented as well
#: because their uptake and their position help tell the neighbours apart, and ``red_marrow``
#: (the cancellous bone of the vertebrae, sacrum, hips and femoral heads, the digital patients'
#: marrow-bearing region; no TotalSegmentator class) because marrow is an organ at risk.
BUILTIN_ORGANS: Final[tuple[str, ...]] = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "lung_left",
    "lung_right",
    "urinary_bladder",
    "stomach",
    "heart",
    "red_marrow",
)

#: Organs with physiological uptake of the therapy agents (Lu-177 DOTATATE/PSMA, I-131): excreting
#: (kidneys, bladder), taking up the agent specifically (liver, spleen, salivary glands, stomach
#: for iodide, thyroid), or holding blood (heart, red marrow). Lesion detection judges uptake in
#: them against their own level.
PHYSIOLOGICAL_UPTAKE: Final[frozenset[str]] = frozenset({
    "kidney_left", "kidney_right", "urinary_bladder", "liver", "spleen", "stomach", "heart",
    "red_marrow",
    "parotid_gland_left", "parotid_gland_right", "submandibular_gland_left",
    "submandibular_gland_right", "thyroid_gland",
})

#: Organs whose uptake is so high and so close to lesions' that a lesion cannot be told from them
#: on SPECT: candidates overlapping them are dropped, not thresholded against their background.
EXCRETORY: Final[frozenset[str]] = frozenset({"kidney_left", "kidney_right", "urinary_bladder"})

#: TotalSegmentator ``total`` task class → our name. Classes that map to one of ours are merged
#: (all lobes of a lung, all vertebrae, all ribs); classes not listed are dropped. Names as in
#: TotalSegmentator v2 (``totalsegmentator/map_to_binary.py``, class map ``total``).
TOTALSEGMENTATOR_TO_OURS: Final[dict[str, str]] = {
    "spleen": "spleen",
    "kidney_right": "kidney_right",
    "kidney_left": "kidney_left",
    "gallbladder": "gallbladder",
    "liver": "liver",
    "stomach": "stomach",
    "pancreas": "pancreas",
    "adrenal_gland_right": "adrenal_gland_right",
    "adrenal_gland_left": "adrenal_gland_left",
    "lung_upper_lobe_left": "lung_left",
    "lung_lower_lobe_left": "lung_left",
    "lung_upper_lobe_right": "lung_right",
    "lung_middle_lobe_right": "lung_right",
    "lung_lower_lobe_right": "lung_right",
    "esophagus": "esophagus",
    "trachea": "trachea",
    "thyroid_gland": "thyroid_gland",
    "small_bowel": "small_bowel",
    "duodenum": "duodenum",
    "colon": "colon",
    "urinary_bladder": "urinary_bladder",
    "prostate": "prostate",
    "heart": "heart",
    "aorta": "aorta",
    "brain": "brain",
    "skull": "skull",
    "spinal_cord": "spinal_cord",
    "sacrum": "sacrum",
    "hip_left": "hip_left",
    "hip_right": "hip_right",
    "femur_left": "femur_left",
    "femur_right": "femur_right",
    **{f"vertebrae_{v}": "vertebrae" for v in (
        *(f"C{i}" for i in range(1, 8)), *(f"T{i}" for i in range(1, 13)),
        *(f"L{i}" for i in range(1, 6)), "S1")},
    **{f"rib_{side}_{i}": "ribs" for side in ("left", "right") for i in range(1, 13)},
}

#: Names met in clinical RTSTRUCT/SEG exports → ours (keys lower case, separators removed by
#: :func:`_key`). Anything not found keeps a cleaned form of its own name.
_SYNONYMS: Final[dict[str, str]] = {
    "liver": "liver",
    "spleen": "spleen",
    "kidneyl": "kidney_left", "lkidney": "kidney_left", "leftkidney": "kidney_left",
    "kidneyleft": "kidney_left", "ltkidney": "kidney_left", "kidneylt": "kidney_left",
    "kidneyr": "kidney_right", "rkidney": "kidney_right", "rightkidney": "kidney_right",
    "kidneyright": "kidney_right", "rtkidney": "kidney_right", "kidneyrt": "kidney_right",
    "lungl": "lung_left", "llung": "lung_left", "leftlung": "lung_left", "lungleft": "lung_left",
    "lunglt": "lung_left",
    "lungr": "lung_right", "rlung": "lung_right", "rightlung": "lung_right",
    "lungright": "lung_right", "lungrt": "lung_right",
    "lung": "lung", "lungs": "lung", "lungtotal": "lung",
    "bladder": "urinary_bladder", "urinarybladder": "urinary_bladder",
    "stomach": "stomach",
    "heart": "heart",
    "spinalcord": "spinal_cord", "cord": "spinal_cord",
    "esophagus": "esophagus", "oesophagus": "esophagus",
    "aorta": "aorta",
    "trachea": "trachea",
    "brain": "brain",
    "thyroid": "thyroid_gland", "thyroidgland": "thyroid_gland",
    "parotidl": "parotid_gland_left", "parotidleft": "parotid_gland_left",
    "parotidr": "parotid_gland_right", "parotidright": "parotid_gland_right",
    "submandibularl": "submandibular_gland_left",
    "submandibularr": "submandibular_gland_right",
    "redmarrow": "red_marrow", "bonemarrow": "red_marrow",
}

_LESION_WORDS = re.compile(r"(tumou?r|lesion|gtv|metasta|nodule|\bmet\b|\bmets\b)", re.I)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def clean_name(name: str) -> str:
    """A label name safe for files and JSON keys: lower case, ``[a-z0-9_]``, no leading digit."""
    s = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if not s:
        s = "structure"
    if s[0].isdigit():
        s = f"s_{s}"
    return s


def standard_name(name: str) -> str:
    """Our standard name for a structure name found in a file (RTSTRUCT ROI, SEG segment).

    Known synonyms map to the standard (``"Kidney_L"`` → ``kidney_left``,
    ``"Bladder"`` → ``urinary_bladder``), TotalSegmentator class names to ours; anything else
    keeps a cleaned form of its own name (:func:`clean_name`).
    """
    if name in TOTALSEGMENTATOR_TO_OURS:
        return TOTALSEGMENTATOR_TO_OURS[name]
    return _SYNONYMS.get(_key(name), clean_name(name))


def guess_kind(name: str, interpreted_type: str | None = None) -> StructureKind:
    """Lesion or organ from a name and, for RTSTRUCT, its RTROIInterpretedType (PS3.3 C.8.8.8).

    ``GTV`` (and a name with tumour/lesion/GTV/metastasis/nodule) is a lesion; everything else
    (ORGAN, AVOIDANCE, EXTERNAL, CTV, PTV …) is an organ or tissue: CTV/PTV margins are planning
    volumes, not activity-bearing lesions.
    """
    if interpreted_type is not None and interpreted_type.strip().upper() == "GTV":
        return StructureKind.LESION
    return StructureKind.LESION if _LESION_WORDS.search(name) else StructureKind.ORGAN
