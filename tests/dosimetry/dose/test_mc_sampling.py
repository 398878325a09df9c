"""Samplers of the Monte Carlo against their analytic distributions (seeded, χ² or k·σ)."""

import math

import numpy as np
import pytest
import torch

from dosimetry.dose.mc.tables import build_tables, wentzel_mean_w
from dosimetry.dose.mc.transport import (
    isotropic_directions,
    rotate,
    sample_compton,
    sample_rayleigh_cos,
    sample_wentzel_cos,
)
from dosimetry.materials import get_material
from dosimetry.materials.electron import ELECTRON_MASS_MEV
from dosimetry.materials.photon import HC_KEV_ANGSTROM, rayleigh_form_factor_squared

pytestmark = pytest.mark.mc

CPU = torch.device("cpu")


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator(device=CPU)
    g.manual_seed(seed)
    return g


def _chi2_equal_bins(samples: np.ndarray, cdf_x: np.ndarray, cdf: np.ndarray, n_bins: int = 20):
    """χ² of samples against a tabulated CDF, with bins of equal expected content."""
    edges = np.interp(np.linspace(0, 1, n_bins + 1), cdf, cdf_x)
    edges[0], edges[-1] = -np.inf, np.inf
    counts, _ = np.histogram(samples, edges)
    expected = samples.size / n_bins
    return float(np.sum((counts - expected) ** 2 / expected))


# χ² with 19 degrees of freedom: mean 19, sd √38 ≈ 6.2; 19 + 5·6.2 ≈ 50 is a 5σ bound that a
# correct sampler fails with probability < 1e-5 (and the seed is fixed).
CHI2_MAX = 50.0


@pytest.mark.parametrize("energy_mev", [0.0551, 0.3645, 1.0])
def test_kahn_sampling_follows_klein_nishina(energy_mev):
    n = 200_000
    e = torch.full((n,), energy_mev, dtype=torch.float32)
    e1, cos_t = sample_compton(e, _gen(1))
    k = energy_mev / ELECTRON_MASS_MEV
    # Compton relation between angle and energy holds for every sample
    ratio = 1.0 / (1.0 + k * (1.0 - cos_t.double()))
    np.testing.assert_allclose(e1.double().numpy() / energy_mev, ratio.numpy(), rtol=2e-6)
    mu = np.linspace(-1, 1, 200_001)
    r = 1.0 / (1.0 + k * (1.0 - mu))
    pdf = r * r * (r + 1.0 / r - (1.0 - mu * mu))  # Klein–Nishina dσ/dΩ up to a constant
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(mu))))
    cdf /= cdf[-1]
    assert _chi2_equal_bins(cos_t.double().numpy(), mu, cdf) < CHI2_MAX


def test_rayleigh_sampling_follows_form_factor():
    water = get_material("water")
    tab = build_tables([water], [1.0], CPU, photon_max_mev=1.0, electron_max_mev=1.0)
    energy = 0.06
    n = 100_000
    cos_t = sample_rayleigh_cos(torch.full((n,), energy), torch.zeros(n, dtype=torch.long),
                                tab, _gen(2))
    x2max = (energy * 1e3 / HC_KEV_ANGSTROM) ** 2
    x2 = np.concatenate(([0.0], np.geomspace(1e-7, x2max, 20_000)))
    mu = 1.0 - 2.0 * x2 / x2max
    pdf = 0.5 * (1.0 + mu * mu) * rayleigh_form_factor_squared(water, np.sqrt(x2))  # per dx²
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x2))))
    cdf /= cdf[-1]
    sampled_x2 = x2max * (1.0 - cos_t.double().numpy()) / 2.0
    assert _chi2_equal_bins(sampled_x2, x2, cdf) < CHI2_MAX


@pytest.mark.parametrize("delta_k", [0.05, 0.7, 4.0])
def test_wentzel_deflection_has_lewis_mean(delta_k):
    tab = build_tables([get_material("water")], [1.0], CPU, 1.0, 1.0)
    n = 200_000
    cos_t = sample_wentzel_cos(torch.full((n,), delta_k), tab, _gen(3)).double().numpy()
    # Lewis: ⟨cos θ⟩ = exp(−ΔK); 5 standard errors of the sample mean
    assert abs(cos_t.mean() - math.exp(-delta_k)) < 5 * cos_t.std() / math.sqrt(n) + 1e-4


def test_wentzel_mean_limits():
    a = np.array([1e-8, 1.0, 1e6])
    w = wentzel_mean_w(a)
    assert w[0] < 1e-6 and w[2] == pytest.approx(0.5, abs=1e-6)
    # closed form at A = 1: 2(ln 2 − 1/2)
    assert w[1] == pytest.approx(2 * (math.log(2) - 0.5), rel=1e-12)


def test_isotropic_and_rotation():
    n = 100_000
    d = isotropic_directions(n, _gen(4), CPU).double()
    assert torch.allclose(d.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-6)
    # each component: mean 0 and variance 1/3 for an isotropic distribution (5σ bounds)
    assert d.mean(0).abs().max() < 5 * math.sqrt(1 / 3 / n)
    assert ((d * d).mean(0) - 1 / 3).abs().max() < 5 * math.sqrt(4 / 45 / n)
    cos_t = 2 * torch.rand(n, generator=_gen(5)) - 1
    phi = 2 * math.pi * torch.rand(n, generator=_gen(6))
    d32 = d.float()
    d32[:10] = torch.tensor([0.0, 0.0, 1.0])  # the pole branch
    new = rotate(d32, cos_t, phi)
    np.testing.assert_allclose(new.norm(dim=1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose((new * d32).sum(1).numpy(), cos_t.numpy(), atol=2e-5)
