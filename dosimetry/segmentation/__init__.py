"""Segmentation: organs on CT, lesions on SPECT, and contours made elsewhere.

Public API
----------
segment_study(workdir, backend, force, progress, device) -> SegmentationResult
    The pipeline stage: ``WORKDIR/segmentation/labels.nii.gz``, ``labels.json``, ``organs.json``.
segment_organs(ct, device) -> OrganPrediction
    The built-in CT organ model (small 3D U-Net, our weights; :mod:`.builtin`).
segment_totalseg(ct, device) -> LabelMap
    TotalSegmentator, when installed (:mod:`.totalseg`).
import_masks(path, reference) -> LabelMap
    NIfTI/MHD label maps with a name table, DICOM RTSTRUCT, DICOM SEG (:mod:`.masks`,
    :mod:`.rtstruct`, :mod:`.seg`).
detect_lesions(spect, organs, ct, options) -> LesionResult
    Threshold / region-growing lesion detection on quantitative SPECT (:mod:`.lesions`); the
    trained lesion model is :func:`.lesion_model.detect_lesions_model`, and the stage picks
    between them by ``LesionOptions.method``.
organ_table(labels, ct) -> OrganTable
    Volumes, masses (CT → density) and mean HU per structure (:mod:`.organs`).
train_segmentation(seed, epochs, out) -> TrainResult
    Reproducible training of the built-in organ model on digital patients (:mod:`.train`);
    the lesion model's is :func:`.lesion_model.train_lesion_model`.

Importing this package is cheap: torch is imported by the functions that run a model.
"""

from dosimetry.segmentation.builtin import (
    ModelCard,
    OrganPrediction,
    WeightsChecksumError,
    load_model,
    segment_organs,
)
from dosimetry.segmentation.labelmap import (
    LabelEntry,
    LabelMap,
    LabelTable,
    parse_label_table,
    read_label_table,
)
from dosimetry.segmentation.lesions import (
    DetectionScore,
    Lesion,
    LesionMethod,
    LesionOptions,
    LesionResult,
    detect_lesions,
    score_detection,
)
from dosimetry.segmentation.masks import import_masks, read_label_image
from dosimetry.segmentation.names import (
    BUILTIN_ORGANS,
    TOTALSEGMENTATOR_TO_OURS,
    StructureKind,
    standard_name,
)
from dosimetry.segmentation.organs import OrganStats, OrganTable, organ_table
from dosimetry.segmentation.rtstruct import (
    StructureSet,
    contour_volume_ml,
    rasterise_roi,
    read_rtstruct,
    rtstruct_to_labelmap,
    write_rtstruct,
)
from dosimetry.segmentation.seg import read_seg, write_seg
from dosimetry.segmentation.stage import (
    Backend,
    BackendSpec,
    SegmentationFallbackWarning,
    SegmentationResult,
    segment_study,
)
from dosimetry.segmentation.totalseg import segment_totalseg
from dosimetry.segmentation.train import TrainConfig, TrainResult, train_segmentation

__all__ = [
    "BUILTIN_ORGANS",
    "TOTALSEGMENTATOR_TO_OURS",
    "Backend",
    "BackendSpec",
    "DetectionScore",
    "LabelEntry",
    "LabelMap",
    "LabelTable",
    "Lesion",
    "LesionMethod",
    "LesionOptions",
    "LesionResult",
    "ModelCard",
    "OrganPrediction",
    "OrganStats",
    "OrganTable",
    "SegmentationFallbackWarning",
    "SegmentationResult",
    "StructureKind",
    "StructureSet",
    "TrainConfig",
    "TrainResult",
    "WeightsChecksumError",
    "contour_volume_ml",
    "detect_lesions",
    "import_masks",
    "load_model",
    "organ_table",
    "parse_label_table",
    "rasterise_roi",
    "read_label_image",
    "read_label_table",
    "read_rtstruct",
    "read_seg",
    "rtstruct_to_labelmap",
    "score_detection",
    "segment_organs",
    "segment_study",
    "segment_totalseg",
    "standard_name",
    "train_segmentation",
    "write_rtstruct",
    "write_seg",
]
