"""Registration: every timepoint of a study onto the reference timepoint's frame.

CT–CT registration (rigid → affine → B-spline with SimpleITK, Mattes mutual information, body
mask, seeded sampling; or rigid + a learned 3D U-Net displacement field), SPECT carried along
with its CT's transform with the total activity conserved, and QA (Dice of propagated labels,
Jacobian determinant, metric before/after, TRE against known transforms on digital patients).

Public API
----------
register_study(workdir, reference=None, method="classical", force=False, progress=None)
    The pipeline stage: writes ``WORKDIR/registration/`` and returns a
    :class:`RegistrationResult`.
register_ct_pair, register_spect_pair
    The classical chain on one image pair (kernels, no files).
resample_activity
    Activity concentration through a transform onto a grid, total conserved.
train_registration(seed, epochs, out)
    Train the learned model on digital-patient pairs (imports torch).
load_model(weights=None, expected_sha256=None, device="cpu")
    The learned model, its weights checked against the recorded SHA-256.

Importing this package does not import torch.
"""

from dosimetry.registration.classical import (
    PairRegistration,
    StageReport,
    register_ct_pair,
    register_spect_pair,
)
from dosimetry.registration.config import (
    QAThresholds,
    RegistrationMethod,
    RegistrationOptions,
    StageSettings,
    TransformStage,
)
from dosimetry.registration.errors import RegistrationError
from dosimetry.registration.qa import JacobianStats, TREStats
from dosimetry.registration.resample import ActivityCheck, resample_activity
from dosimetry.registration.result import (
    LabelDice,
    RegistrationResult,
    TimepointQA,
    TimepointRegistration,
)
from dosimetry.registration.stage import read_transform, register_study


def train_registration(seed: int = 0, epochs: int = 10, out=None, **kw):
    """Train the learned registration model (see :mod:`dosimetry.registration.learned.train`)."""
    from dosimetry.registration.learned.train import train_registration as _train

    return _train(seed=seed, epochs=epochs, out=out, **kw)


def load_model(weights=None, expected_sha256=None, device="cpu"):
    """Load the learned model (see :func:`dosimetry.registration.learned.load_model`)."""
    from dosimetry.registration.learned import load_model as _load

    return _load(weights, expected_sha256=expected_sha256, device=device)


__all__ = [
    "ActivityCheck",
    "JacobianStats",
    "LabelDice",
    "PairRegistration",
    "QAThresholds",
    "RegistrationError",
    "RegistrationMethod",
    "RegistrationOptions",
    "RegistrationResult",
    "StageReport",
    "StageSettings",
    "TREStats",
    "TimepointQA",
    "TimepointRegistration",
    "TransformStage",
    "load_model",
    "read_transform",
    "register_ct_pair",
    "register_spect_pair",
    "register_study",
    "resample_activity",
    "train_registration",
]
