"""Outcome models: tumour control (Poisson–LQ on BED) and normal-tissue complication (LKB).

TCP (Poisson–LQ; e.g. Webb & Nahum, Phys Med Biol 1993;38:653, doi:10.1088/0031-9155/38/6/001,
DOI unverified). With BED the surviving fraction is exp(−α·BED) (BED = −ln SF/α), so for N₀ =
ρ·V clonogens

    TCP = exp(−ρ Σ_i v_i e^{−α BED_i})                       (voxels i of volume v_i)

and, with an inter-patient spread of α ~ N(ᾱ, σ_α) (clipped at 0), the population TCP is the
mean of TCP over α (fine grid over ±6 σ). Default parameters ᾱ = 0.35 Gy⁻¹, σ_α = 0.08 Gy⁻¹,
ρ = 10⁷ cm⁻³ are the generic values of the external-beam TCP literature (Webb & Nahum 1993;
**unverified, and not fitted to RPT data**): use TCP curves to compare plans, not as absolute
predictions.

NTCP (Lyman–Kutcher–Burman; Burman et al., IJROBP 1991;21:123,
doi:10.1016/0360-3016(91)90172-Z, DOI unverified; tolerance data from Emami et al., IJROBP
1991;21:109, doi:10.1016/0360-3016(91)90171-Y, DOI unverified)::

    NTCP = Φ((gEUD − TD50)/(m·TD50)),   gEUD = (Σ_i v_i D_i^{1/n})^n

with D the **EQD2** (the parameters were fitted to external-beam therapy in 2-Gy fractions, so
RPT doses are converted: EQD2 = BED/(1 + 2/(α/β)) with the organ's α/β). Whole-organ uniform
irradiation (v = 1) makes n irrelevant. Defaults (:data:`LKB_PARAMETERS`): kidney TD50 = 28 Gy,
m = 0.1, n = 0.7 (clinical nephritis); liver 40 Gy, 0.15, 0.32 (liver failure; unverified);
parotid 46 Gy, 0.18, 0.7 (xerostomia; unverified).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtr

from dosimetry.errors import InputError
from dosimetry.io.atomic import atomic_path
from planning.optimiser import PlanningProblem
from planning.radiobiology import eqd2
from planning.results import VoiKind
from planning.tissues import TissueName

__all__ = [
    "LKB_PARAMETERS",
    "TCP_DEFAULT",
    "LkbParameters",
    "OutcomeCurves",
    "TcpParameters",
    "ntcp_lkb",
    "outcome_curves",
    "plot_outcome_curves",
    "tcp_poisson",
]

FloatArray = NDArray[np.float64]
#: Points of the α grid for the population TCP (spacing 0.02 σ).
_ALPHA_GRID = 601


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TcpParameters(_Model):
    """Poisson–LQ TCP parameters."""

    alpha_per_gy: float = Field(gt=0, description="Mean radiosensitivity ᾱ [1/Gy].")
    alpha_sigma_per_gy: float = Field(ge=0, description="Inter-patient σ of α [1/Gy].")
    clonogen_density_per_ml: float = Field(gt=0, description="ρ [clonogens/cm³].")
    source: str = ""
    verified: bool = False


class LkbParameters(_Model):
    """Lyman–Kutcher–Burman parameters (EQD2-based)."""

    td50_gy: float = Field(gt=0)
    m: float = Field(gt=0)
    n: float = Field(gt=0)
    endpoint: str = ""
    source: str = ""
    verified: bool = False


#: Generic TCP parameters (Webb & Nahum 1993; unverified, not fitted to RPT).
TCP_DEFAULT = TcpParameters(
    alpha_per_gy=0.35, alpha_sigma_per_gy=0.08, clonogen_density_per_ml=1e7,
    source="Webb & Nahum, Phys Med Biol 1993;38:653 (generic EBRT values; unverified)")

_BURMAN = "Burman et al., IJROBP 1991;21:123 (doi:10.1016/0360-3016(91)90172-Z, DOI unverified)"
#: LKB parameters by tissue name.
LKB_PARAMETERS: dict[str, LkbParameters] = {
    TissueName.KIDNEY: LkbParameters(td50_gy=28.0, m=0.1, n=0.7, endpoint="clinical nephritis",
                                     source=_BURMAN, verified=False),
    TissueName.LIVER: LkbParameters(td50_gy=40.0, m=0.15, n=0.32, endpoint="liver failure",
                                    source=_BURMAN + "; values unverified", verified=False),
    TissueName.SALIVARY_GLAND: LkbParameters(td50_gy=46.0, m=0.18, n=0.7,
                                             endpoint="xerostomia (parotid)",
                                             source=_BURMAN + "; values unverified",
                                             verified=False),
}


def tcp_poisson(bed_gy: ArrayLike, volume_ml: ArrayLike,
                params: TcpParameters = TCP_DEFAULT) -> float:
    """Tumour control probability, Poisson–LQ on BED (module docstring).

    Parameters
    ----------
    bed_gy : array_like
        BED [Gy]: a scalar (uniform) or one value per voxel, any shape.
    volume_ml : array_like
        Volume [mL]: total (split evenly over the voxels of ``bed_gy``) or one per voxel.
    params : TcpParameters

    Returns
    -------
    float
        TCP in [0, 1], averaged over the α spread when ``alpha_sigma_per_gy`` > 0.
    """
    b = np.asarray(bed_gy, dtype=float)
    v = np.asarray(volume_ml, dtype=float)
    if np.any(~np.isfinite(b)) or np.any(b < 0):
        raise InputError(f"BED must be finite and ≥ 0 Gy, got {bed_gy}")
    if np.any(~np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"volume must be finite and > 0 mL, got {volume_ml}")
    if v.ndim == 0 and b.ndim > 0:
        v = np.full(b.shape, float(v) / b.size)
    elif v.shape != b.shape:
        raise InputError(f"volume shape {v.shape} does not match BED shape {b.shape}")
    b, v = b.ravel(), v.ravel()
    if params.alpha_sigma_per_gy > 0:
        # TCP(α) is a steep sigmoid in α, so a fine uniform grid over ±6 σ integrates it
        # smoothly where a few Gauss–Hermite nodes would leave steps in TCP curves.
        xi = np.linspace(-6.0, 6.0, _ALPHA_GRID)
        w = np.exp(-0.5 * xi * xi)
        w /= w.sum()
        alphas = np.maximum(params.alpha_per_gy + params.alpha_sigma_per_gy * xi, 0.0)
    else:
        alphas, w = np.array([params.alpha_per_gy]), np.array([1.0])
    survivors = params.clonogen_density_per_ml * np.sum(
        v[None, :] * np.exp(-alphas[:, None] * b[None, :]), axis=1)
    return float(np.sum(w * np.exp(-survivors)))


def ntcp_lkb(eqd2_gy: ArrayLike, params: LkbParameters,
             volume_fractions: ArrayLike | None = None) -> FloatArray:
    """Normal-tissue complication probability, Lyman–Kutcher–Burman on EQD2.

    Parameters
    ----------
    eqd2_gy : array_like
        Without ``volume_fractions``: uniform whole-organ EQD2 values [Gy], any shape (one NTCP
        each). With them: the EQD2 of each voxel or DVH bin.
    params : LkbParameters
    volume_fractions : array_like, optional
        Fraction of the organ in each voxel/bin (same shape, summing to 1): gEUD reduction.

    Returns
    -------
    ndarray
        NTCP (shape of ``eqd2_gy``, or a 0-d array with volume fractions).
    """
    d = np.asarray(eqd2_gy, dtype=float)
    if np.any(~np.isfinite(d)) or np.any(d < 0):
        raise InputError(f"EQD2 must be finite and ≥ 0 Gy, got {eqd2_gy}")
    if volume_fractions is not None:
        f = np.asarray(volume_fractions, dtype=float)
        if f.shape != d.shape or np.any(f < 0) or not math.isclose(float(f.sum()), 1.0,
                                                                    rel_tol=1e-6):
            raise InputError("volume fractions must be ≥ 0, sum to 1 and match the EQD2 shape "
                             f"{d.shape} (got shape {f.shape}, sum {float(f.sum()):.6g})")
        d = np.asarray(np.sum(f * d ** (1.0 / params.n)) ** params.n)
    return ndtr((d - params.td50_gy) / (params.m * params.td50_gy))


@dataclass(frozen=True)
class OutcomeCurves:
    """TCP and NTCP against the activity per remaining cycle (equal cycles).

    Attributes
    ----------
    activity_per_cycle_gbq : ndarray, shape (k,)
    remaining_cycles : int
    tcp : dict of str → ndarray (k,)
        Per lesion (with a mass).
    ntcp : dict of str → ndarray (k,)
        Per organ VOI whose tissue has LKB parameters.
    notes : tuple of str
    """

    activity_per_cycle_gbq: FloatArray
    remaining_cycles: int
    tcp: dict[str, FloatArray] = field(default_factory=dict)
    ntcp: dict[str, FloatArray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-compatible dict."""
        return {"activity_per_cycle_gbq": self.activity_per_cycle_gbq.tolist(),
                "remaining_cycles": self.remaining_cycles,
                "tcp": {k: v.tolist() for k, v in self.tcp.items()},
                "ntcp": {k: v.tolist() for k, v in self.ntcp.items()},
                "notes": list(self.notes)}


def outcome_curves(problem: PlanningProblem, activity_per_cycle_gbq: ArrayLike,
                   tcp_params: TcpParameters = TCP_DEFAULT,
                   lkb: dict[str, LkbParameters] | None = None) -> OutcomeCurves:
    """TCP per lesion and NTCP per organ for equal remaining cycles of each given activity.

    Total BED = delivered BED + R·(x a + k (x a)²) with the point estimates of the problem;
    lesion volume from ``mass_g`` at 1 g/mL (lesions without a mass are skipped, announced);
    organs use whole-organ LKB on EQD2 (uniform dose assumed).
    """
    lkb = LKB_PARAMETERS if lkb is None else lkb
    acts = np.asarray(activity_per_cycle_gbq, dtype=float)
    if acts.ndim != 1 or np.any(acts < 0) or np.any(~np.isfinite(acts)):
        raise InputError(f"activities must be a 1-D array of finite values ≥ 0 GBq, got {acts}")
    n = problem.settings.remaining_cycles
    notes: list[str] = []
    tcp: dict[str, FloatArray] = {}
    ntcp: dict[str, FloatArray] = {}
    for v in problem.vois:
        x = v.dose_gy_per_gbq * acts
        total_bed = float(v.delivered_bed_gy or 0.0) + n * (x + v.k_bed * x * x)
        if v.kind is VoiKind.LESION:
            if v.mass_g is None:
                notes.append(f"{v.name}: no mass, no TCP")
                continue
            tcp[v.name] = np.array([tcp_poisson(b, v.mass_g, tcp_params) for b in total_bed])
        elif v.tissue.name in lkb:
            ntcp[v.name] = np.asarray(
                ntcp_lkb(eqd2(total_bed, v.tissue.alpha_beta_gy), lkb[v.tissue.name]),
                dtype=float)
    return OutcomeCurves(activity_per_cycle_gbq=acts, remaining_cycles=n, tcp=tcp, ntcp=ntcp,
                         notes=tuple(notes))


def plot_outcome_curves(curves: OutcomeCurves, path: str | os.PathLike[str],
                        planned_activity_gbq: float | None = None,
                        title: str | None = None) -> Path:
    """Plot TCP/NTCP against activity per cycle and write a PNG atomically.

    Uses matplotlib's object API with the Agg canvas (no global pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: outcome plot must end in .png")
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    a = curves.activity_per_cycle_gbq
    for name, y in curves.tcp.items():
        ax.plot(a, y, "-", label=f"TCP {name}")
    for name, y in curves.ntcp.items():
        ax.plot(a, y, "--", label=f"NTCP {name}")
    if planned_activity_gbq is not None:
        ax.axvline(planned_activity_gbq, color="k", lw=0.8, ls=":", label="plan")
    ax.set_xlabel(f"activity per cycle [GBq] ({curves.remaining_cycles} remaining cycle(s))")
    ax.set_ylabel("probability")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "TCP (Poisson–LQ) and NTCP (LKB on EQD2)")
    if curves.tcp or curves.ntcp:
        ax.legend(loc="best", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
