"""Uncertainty of the time-integrated activity (TIA), following the EANM guidance.

Gear et al., "EANM practical guidance on uncertainty analysis for molecular radiotherapy
absorbed dose calculations", EJNMMI 2018;45:2456–2474, doi:10.1007/s00259-018-4136-7, split the
TIA uncertainty into

* terms that differ from one timepoint to the next — counting statistics, and whatever else the
  user can state per timepoint (reconstruction, registration, delineation) — which enter the
  curve fit as the σᵢ of each sample and reach the TIA through the fit (covariance propagation
  with the analytic gradient of the integral, or Monte Carlo resampling of the data);
* terms shared by every timepoint — the calibration factor (camera sensitivity) and, when one
  VOI volume is used at every timepoint, its recovery coefficient — which scale the whole curve
  and therefore the TIA: they are added in quadrature as relative terms after the fit.

Everything is in internal units (Bq, Bq·s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dosimetry.errors import InputError
from dosimetry.kinetics import models as km
from dosimetry.kinetics.fit import (
    PARAMETRIC_MODELS,
    KineticFit,
    ModelName,
    clean_json,
    fit_model,
)


def counting_relative_sigma(counts: ArrayLike) -> np.ndarray:
    """Relative σ of an activity derived from ``counts`` detected counts: 1/√N (Poisson).

    Gear et al. 2018 (doi:10.1007/s00259-018-4136-7), counting-statistics term. For
    reconstructed SPECT this is a lower bound (noise is correlated between voxels).

    Raises
    ------
    InputError
        Naming the first count that is not > 0.
    """
    n = np.asarray(counts, dtype=float)
    bad = ~(np.isfinite(n) & (n > 0))
    if np.any(bad):
        raise InputError(f"counts must be > 0, got {n[bad].ravel()[0]}")
    return 1.0 / np.sqrt(n)


def timepoint_sigma(activity_bq: ArrayLike, *, counts: ArrayLike | None = None,
                    relative_sigma: float | ArrayLike = 0.0,
                    absolute_sigma_bq: float | ArrayLike = 0.0) -> np.ndarray:
    """Standard uncertainty of each timepoint's activity from its uncorrelated terms [Bq].

    σᵢ² = (Aᵢ/√Nᵢ)² + (rᵢ·Aᵢ)² + aᵢ², i.e. counting statistics, a relative term per timepoint
    (reconstruction, registration, delineation repeatability…) and an absolute term, in
    quadrature (Gear et al. 2018, doi:10.1007/s00259-018-4136-7). Do *not* include the
    calibration factor here: it is the same at every timepoint (see :func:`tia_uncertainty`).

    Parameters
    ----------
    activity_bq : (n,) array_like
        Activity per timepoint [Bq].
    counts : (n,) array_like, optional
        Counts behind each activity.
    relative_sigma : float or (n,) array_like
        Relative σ per timepoint (fraction).
    absolute_sigma_bq : float or (n,) array_like
        Absolute σ per timepoint [Bq].

    Returns
    -------
    (n,) ndarray
        σ per timepoint [Bq].
    """
    a = np.abs(np.asarray(activity_bq, dtype=float))
    rel = np.broadcast_to(np.asarray(relative_sigma, dtype=float), a.shape)
    ab = np.broadcast_to(np.asarray(absolute_sigma_bq, dtype=float), a.shape)
    if np.any(rel < 0) or np.any(ab < 0):
        raise InputError(f"relative/absolute σ must be ≥ 0, got {relative_sigma!r}, "
                         f"{absolute_sigma_bq!r}")
    var = (rel * a) ** 2 + ab**2
    if counts is not None:
        var = var + (counting_relative_sigma(counts) * a) ** 2
    return np.sqrt(var)


@dataclass(frozen=True)
class MonteCarloTia:
    """TIA spread from refitting resampled data (parametric bootstrap of the samples).

    Attributes
    ----------
    model : ModelName
        Model refitted (the one chosen by the original fit).
    n_samples, n_failed : int
        Resamples drawn, and how many of them failed to fit (excluded).
    mean_bq_s, sigma_bq_s : float
        Mean and standard deviation of the resampled TIAs [Bq·s].
    percentiles_bq_s : dict
        2.5, 16, 50, 84 and 97.5 percentiles [Bq·s].
    """

    model: ModelName
    n_samples: int
    n_failed: int
    mean_bq_s: float
    sigma_bq_s: float
    percentiles_bq_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return clean_json({"model": str(self.model), "n_samples": self.n_samples,
                       "n_failed": self.n_failed, "mean_bq_s": self.mean_bq_s,
                       "sigma_bq_s": self.sigma_bq_s, "percentiles_bq_s": self.percentiles_bq_s})


def monte_carlo_tia(fit: KineticFit, rng: np.random.Generator,
                    n_samples: int = 500) -> MonteCarloTia:
    """Monte Carlo TIA uncertainty: resample every sample within its σ and refit.

    Each draw replaces Aᵢ by Aᵢ + σᵢ·εᵢ (εᵢ standard normal, independent across timepoints, σᵢ
    the values the fit used) and refits the chosen model starting from the best fit. The
    trapezoid is linear in the data, so its draws need no refit.

    Parameters
    ----------
    fit : KineticFit
        A successful fit.
    rng : numpy.random.Generator
        Seeded generator (same seed, same result).
    n_samples : int
        Number of draws (the relative standard error of the returned σ is ≈ 1/√(2N)).

    Returns
    -------
    MonteCarloTia
    """
    if not isinstance(rng, np.random.Generator):
        raise InputError("monte_carlo_tia needs a seeded numpy.random.Generator "
                         "(np.random.default_rng(seed))")
    if n_samples < 2:
        raise InputError(f"n_samples must be ≥ 2, got {n_samples}")
    if not fit.success:
        raise InputError(f"VOI {fit.voi!r}: cannot resample a failed fit ({fit.message})")
    tac = fit.tac
    sigma = np.array(fit.sigma_bq)
    a = tac.activity
    draws = a[None, :] + sigma[None, :] * rng.standard_normal((n_samples, tac.n))
    if fit.model is ModelName.TRAPEZOID:
        w = km.trapezoid_weights(tac.times, fit.decay_constant_per_s, head=fit.trapezoid_head)
        tias = draws @ w
    else:
        assert fit.model in PARAMETRIC_MODELS
        start = np.array(list(fit.params.values()))
        tias = np.empty(n_samples)
        for i, d in enumerate(draws):
            c = fit_model(tac, fit.model, fit.decay_constant_per_s, start=start,
                          activity_bq=d, sigma_bq=sigma)
            tias[i] = c.tia_bq_s if c.success else np.nan
    good = tias[np.isfinite(tias)]
    n_failed = int(n_samples - good.size)
    if good.size < 2:
        return MonteCarloTia(fit.model, n_samples, n_failed, math.nan, math.nan, {})
    pct = np.percentile(good, [2.5, 16, 50, 84, 97.5])
    return MonteCarloTia(
        fit.model, n_samples, n_failed, float(good.mean()), float(good.std(ddof=1)),
        {k: float(v) for k, v in zip(("2.5", "16", "50", "84", "97.5"), pct, strict=True)})


@dataclass(frozen=True)
class TiaUncertainty:
    """TIA with its uncertainty budget (Bq·s).

    Attributes
    ----------
    tia_bq_s : float
        Time-integrated activity.
    fit_sigma_bq_s : float
        From the per-timepoint (uncorrelated) σ through the fit, by covariance propagation.
    calibration_relative : float
        Relative σ of the calibration factor (fully correlated across timepoints).
    recovery_relative : float
        Relative σ of the recovery coefficient / volume (fully correlated across timepoints).
    extra_relative : float
        Any other fully correlated relative term (e.g. a single-timepoint method's error).
    monte_carlo : MonteCarloTia or None
        Resampling cross-check of ``fit_sigma_bq_s`` when it was run.
    """

    tia_bq_s: float
    fit_sigma_bq_s: float
    calibration_relative: float = 0.0
    recovery_relative: float = 0.0
    extra_relative: float = 0.0
    monte_carlo: MonteCarloTia | None = None

    @property
    def components_bq_s(self) -> dict[str, float]:
        """Each term as a standard uncertainty in Bq·s."""
        t = abs(self.tia_bq_s)
        return {"fit": self.fit_sigma_bq_s, "calibration": self.calibration_relative * t,
                "recovery": self.recovery_relative * t, "other": self.extra_relative * t}

    @property
    def sigma_bq_s(self) -> float:
        """Combined standard uncertainty: the components in quadrature."""
        return float(math.sqrt(sum(v * v for v in self.components_bq_s.values())))

    @property
    def relative(self) -> float:
        """Combined relative standard uncertainty."""
        return self.sigma_bq_s / abs(self.tia_bq_s) if self.tia_bq_s else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return clean_json({
            "tia_bq_s": self.tia_bq_s, "sigma_bq_s": self.sigma_bq_s,
            "relative": self.relative, "components_bq_s": self.components_bq_s,
            "monte_carlo": None if self.monte_carlo is None else self.monte_carlo.to_dict(),
        })


def tia_uncertainty(fit: KineticFit, *, calibration_relative_sigma: float = 0.0,
                    recovery_relative_sigma: float = 0.0, extra_relative_sigma: float = 0.0,
                    monte_carlo: MonteCarloTia | None = None) -> TiaUncertainty:
    """Combine the fit uncertainty with the timepoint-independent (correlated) terms.

    Parameters
    ----------
    fit : KineticFit
        A successful fit; its ``tia_sigma_bq_s`` is the fit term.
    calibration_relative_sigma : float
        Relative σ of the calibration factor. It multiplies every timepoint alike, hence the
        TIA: σ_cal(TIA) = r_cal·TIA (Gear et al. 2018, doi:10.1007/s00259-018-4136-7).
    recovery_relative_sigma : float
        Relative σ of the recovery coefficient from the VOI volume uncertainty
        (:meth:`dosimetry.kinetics.voi.RecoveryCurve.relative_sigma`), same reasoning.
    extra_relative_sigma : float
        Any other fully correlated relative term.
    monte_carlo : MonteCarloTia, optional
        Attach a resampling result for reporting.

    Returns
    -------
    TiaUncertainty
    """
    for name, v in (("calibration_relative_sigma", calibration_relative_sigma),
                    ("recovery_relative_sigma", recovery_relative_sigma),
                    ("extra_relative_sigma", extra_relative_sigma)):
        if not (np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be ≥ 0, got {v}")
    if not fit.success:
        raise InputError(f"VOI {fit.voi!r}: no TIA to attach an uncertainty to ({fit.message})")
    return TiaUncertainty(fit.tia_bq_s, fit.tia_sigma_bq_s, float(calibration_relative_sigma),
                          float(recovery_relative_sigma), float(extra_relative_sigma),
                          monte_carlo)


def tia_sigma_from_covariance(model: ModelName | str, theta: ArrayLike, covariance: ArrayLike,
                              t_end_s: float = math.inf) -> float:
    """σ of ∫₀^T f dt by first-order propagation: √(gᵀ C g), g the analytic gradient.

    Parameters
    ----------
    model : ModelName
        Parametric model.
    theta : (p,) array_like
        Parameters in SI (Bq, 1/s).
    covariance : (p, p) array_like
        Their covariance.
    t_end_s : float
        Upper limit [s] (default ∞).
    """
    spec = km.get_model(ModelName(model))
    g = km.integral_gradient(spec, np.asarray(theta, float), t_end_s)
    c = np.asarray(covariance, dtype=float)
    return float(math.sqrt(max(float(g @ c @ g), 0.0)))
