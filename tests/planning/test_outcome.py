"""TCP (Poisson–LQ) and NTCP (LKB) against their formulas; curves and the PNG writer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dosimetry.errors import InputError
from planning.optimiser import PlanningProblem, PlanSettings, VoiPlanInput
from planning.outcome import (
    LKB_PARAMETERS,
    LkbParameters,
    TcpParameters,
    ntcp_lkb,
    outcome_curves,
    plot_outcome_curves,
    tcp_poisson,
)
from planning.radiobiology import eqd2
from planning.results import VoiKind
from planning.tissues import get_tissue

FIXED = TcpParameters(alpha_per_gy=0.35, alpha_sigma_per_gy=0.0, clonogen_density_per_ml=1e7)


def test_tcp_uniform_formula_and_voxel_split():
    # TCP = exp(−ρ V e^(−α BED)): 10 mL, BED 60 Gy → N = 1e8 · e^(−21) = 0.0758, TCP = 0.927.
    expected = math.exp(-1e7 * 10.0 * math.exp(-0.35 * 60.0))
    assert tcp_poisson(60.0, 10.0, FIXED) == pytest.approx(expected, rel=1e-12)
    # The same uniform BED split over voxels changes nothing (sum of identical terms).
    assert tcp_poisson(np.full((4, 5), 60.0), 10.0, FIXED) == pytest.approx(expected, rel=1e-12)
    # A cold voxel lowers TCP (the weakest voxel dominates).
    cold = np.full(20, 60.0)
    cold[0] = 30.0
    assert tcp_poisson(cold, 10.0, FIXED) < expected


def test_population_tcp_is_flatter_than_fixed_alpha():
    beds = np.linspace(20.0, 100.0, 9)
    fixed = np.array([tcp_poisson(b, 10.0, FIXED) for b in beds])
    pop = np.array([tcp_poisson(b, 10.0) for b in beds])  # σ_α = 0.08 Gy⁻¹ default
    assert np.all(np.diff(pop) > 0)
    d50_fixed = (math.log(1e8) - math.log(math.log(2))) / 0.35  # TCP = 0.5 exactly
    assert tcp_poisson(d50_fixed, 10.0, FIXED) == pytest.approx(0.5, rel=1e-12)
    # The spread lifts the low end and lowers the high end.
    assert pop[0] > fixed[0] and pop[-1] < fixed[-1]


def test_lkb_values_and_geud():
    kid = LKB_PARAMETERS["kidney"]
    assert (kid.td50_gy, kid.m, kid.n) == (28.0, 0.1, 0.7)
    assert ntcp_lkb(28.0, kid) == pytest.approx(0.5, abs=1e-15)
    # EQD2 = TD50·(1 + m) is one standard deviation above: Φ(1) = 0.841345.
    assert ntcp_lkb(28.0 * 1.1, kid) == pytest.approx(0.8413447, rel=1e-7)
    # gEUD of a uniform organ is its dose; n = 1 makes gEUD the mean dose.
    assert ntcp_lkb(np.full(4, 30.0), kid, np.full(4, 0.25)) == pytest.approx(ntcp_lkb(30.0, kid))
    lin = LkbParameters(td50_gy=28.0, m=0.1, n=1.0)
    assert ntcp_lkb(np.array([20.0, 40.0]), lin, np.array([0.5, 0.5])) == \
        pytest.approx(ntcp_lkb(30.0, lin), rel=1e-12)
    # Kidney BED limit 40 Gy as EQD2 = 40/(1 + 2/2.6) = 22.6 Gy → NTCP = Φ(−1.93) ≈ 2.7 %.
    e = eqd2(40.0, 2.6)
    assert ntcp_lkb(e, kid) == pytest.approx(0.0268, abs=5e-4)
    with pytest.raises(InputError, match="sum to 1"):
        ntcp_lkb(np.ones(3), kid, np.ones(3))


def test_curves_and_png(tmp_path):
    kid = VoiPlanInput(name="kidney", kind=VoiKind.ORGAN, tissue=get_tissue("kidney"),
                       dose_gy_per_gbq=0.6, g_factor=0.05, delivered_dose_gy=4.0)
    les = VoiPlanInput(name="lesion", kind=VoiKind.LESION, tissue=get_tissue("tumour"),
                       dose_gy_per_gbq=3.0, g_factor=0.02, delivered_dose_gy=20.0, mass_g=10.0)
    nomass = les.model_copy(update={"name": "small", "mass_g": None})
    prob = PlanningProblem(vois=(kid, les, nomass), settings=PlanSettings(remaining_cycles=3,
                                                                         max_activity_gbq=15))
    acts = np.linspace(0, 15, 16)
    c = outcome_curves(prob, acts)
    assert set(c.tcp) == {"lesion"} and set(c.ntcp) == {"kidney"}
    assert np.all(np.diff(c.tcp["lesion"]) >= 0) and np.all(np.diff(c.ntcp["kidney"]) >= 0)
    assert any("small: no mass" in n for n in c.notes)
    assert c.to_dict()["activity_per_cycle_gbq"][-1] == 15.0
    path = plot_outcome_curves(c, tmp_path / "curves.png", planned_activity_gbq=7.4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    with pytest.raises(InputError, match="must end in .png"):
        plot_outcome_curves(c, tmp_path / "curves.pdf")
