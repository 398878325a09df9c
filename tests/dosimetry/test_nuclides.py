"""ICRP-107 nuclide data: reference values, spectra, sampling, names and errors.

Reference values are those of /work/shared/reference/physics.md (derived from ICRP-107,
doi:10.1016/j.icrp.2008.10.004). Every tolerance says where it comes from.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest

from dosimetry import units
from dosimetry.errors import InputError, NuclideError
from dosimetry.nuclides import (
    ICRP107_SOURCE,
    BetaSpectrum,
    EmissionLine,
    Nuclide,
    RadiationType,
    available_nuclides,
    get_nuclide,
    normalise_nuclide_name,
)

# physics.md prints energies per decay with 5 decimals (MeV); its values equal the database sums
# truncated (not rounded) to that digit, so the honest tolerance is one unit in the last place.
PRINTED_5_DECIMALS_MEV = 1e-5


def _line(nuclide: Nuclide, energy_kev: float, tol_kev: float) -> EmissionLine:
    """The single photon line of ``nuclide`` within ``tol_kev`` of ``energy_kev``."""
    hits = [
        ln
        for ln in nuclide.photon_lines()
        if abs(units.mev_to_kev(ln.energy_mev) - energy_kev) <= tol_kev
    ]
    assert len(hits) == 1, f"expected one photon line at {energy_kev} keV, got {hits}"
    return hits[0]


# --- half-lives -------------------------------------------------------------------------------


def test_half_lives_match_icrp107_index():
    # physics.md quotes the ICRP-107 index values exactly (6.647 d, 8.0207 d); the only error
    # left is the float product d → s.
    assert get_nuclide("Lu-177").half_life_s == pytest.approx(6.647 * units.DAY, rel=1e-12)
    assert get_nuclide("I-131").half_life_s == pytest.approx(8.0207 * units.DAY, rel=1e-12)


def test_decay_constant_is_ln2_over_half_life():
    lu = get_nuclide("Lu-177")
    assert lu.decay_constant_per_s == pytest.approx(math.log(2) / (6.647 * 86400.0), rel=1e-12)


def test_half_life_units_other_than_days():
    # ICRP-107 gives F-18 in minutes ("m" = minute), Sr-90 in years (Julian year, units.YEAR),
    # Tc-99m in hours; values as printed in the index, float product only.
    assert get_nuclide("F-18").half_life_s == pytest.approx(109.77 * units.MINUTE, rel=1e-12)
    assert get_nuclide("Sr-90").half_life_s == pytest.approx(28.79 * 365.25 * 86400, rel=1e-12)
    assert get_nuclide("Tc-99m").half_life_s == pytest.approx(6.015 * units.HOUR, rel=1e-12)


# --- energy per decay -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "electron_mev", "photon_mev"),
    [("Lu-177", 0.14792, 0.03509), ("I-131", 0.19184, 0.38275)],
)
def test_energy_per_decay_matches_reference(name, electron_mev, photon_mev):
    nuc = get_nuclide(name)
    assert nuc.electron_energy_mev_per_decay == pytest.approx(
        electron_mev, abs=PRINTED_5_DECIMALS_MEV
    )
    assert nuc.photon_energy_mev_per_decay == pytest.approx(photon_mev, abs=PRINTED_5_DECIMALS_MEV)


def test_lu177_electron_split():
    # EJNMMI Phys 2020 (doi:10.1186/s40658-020-00301-2) Table 1, via physics.md: β 133.3 keV,
    # IC 13.5 keV, Auger 1.1 keV per decay. Printed to 0.1 keV → half a unit, 0.05 keV.
    lu = get_nuclide("Lu-177")
    kev = {t: units.mev_to_kev(lu.energy_per_decay_mev(t)) for t in RadiationType}
    assert kev[RadiationType.BETA_MINUS] == pytest.approx(133.3, abs=0.05)
    assert kev[RadiationType.IC] == pytest.approx(13.5, abs=0.05)
    assert kev[RadiationType.AUGER] == pytest.approx(1.1, abs=0.05)
    assert kev[RadiationType.BETA_PLUS] == 0.0
    assert kev[RadiationType.ALPHA] == 0.0


def test_electron_and_photon_totals_are_sums_of_their_types():
    for name in ("Lu-177", "I-131", "F-18", "Ga-68"):
        nuc = get_nuclide(name)
        electron = sum(nuc.energy_per_decay_mev(t) for t in RadiationType if t.is_electron)
        photon = sum(nuc.energy_per_decay_mev(t) for t in RadiationType if t.is_photon)
        # both are float sums of the same terms: only summation-order rounding differs
        assert nuc.electron_energy_mev_per_decay == pytest.approx(electron, rel=1e-12)
        assert nuc.photon_energy_mev_per_decay == pytest.approx(photon, rel=1e-12)
        assert nuc.energy_per_decay_mev(
            [RadiationType.GAMMA, "x", "annihilation"]
        ) == pytest.approx(photon, rel=1e-12)


def test_radiation_type_groups():
    assert {t for t in RadiationType if t.is_electron} == {
        RadiationType.BETA_MINUS,
        RadiationType.BETA_PLUS,
        RadiationType.IC,
        RadiationType.AUGER,
    }
    assert {t for t in RadiationType if t.is_photon} == {
        RadiationType.GAMMA,
        RadiationType.XRAY,
        RadiationType.ANNIHILATION,
    }
    assert [t.value for t in RadiationType] == [
        "beta-",
        "beta+",
        "ic",
        "auger",
        "gamma",
        "x",
        "alpha",
        "annihilation",
        "other",
    ]


def test_unknown_radiation_type_is_named():
    with pytest.raises(InputError, match="'neutrino'"):
        get_nuclide("Lu-177").energy_per_decay_mev("neutrino")


# --- photon lines -----------------------------------------------------------------------------


def test_lu177_main_photon_lines():
    # physics.md: 208.4 keV (~11 %), 113.0 keV (~6.4 %). Energies printed to 0.1 keV → 0.05 keV
    # (ICRP-107's 112.95 keV sits exactly on that rounding boundary, hence + 1e-6 keV for the
    # float MeV → keV product); yields printed to 0.1 % → 0.05 %.
    lu = get_nuclide("Lu-177")
    tol_kev = 0.05 + 1e-6
    l208, l113 = _line(lu, 208.4, tol_kev), _line(lu, 113.0, tol_kev)
    assert l208.yield_per_decay == pytest.approx(0.11, abs=5e-4)
    assert l113.yield_per_decay == pytest.approx(0.064, abs=5e-4)
    assert l208.radiation is RadiationType.GAMMA and l113.radiation is RadiationType.GAMMA
    # and these are the two strongest photon lines above 20 keV
    strongest = sorted(lu.photon_lines(min_energy_mev=0.020), key=lambda ln: -ln.yield_per_decay)
    assert {round(units.mev_to_kev(ln.energy_mev)) for ln in strongest[:2]} == {208, 113}


def test_i131_main_photon_lines():
    # physics.md: 364.5 keV (~81 %), 637.0 keV (~7 %), yields marked "unverified" and written to
    # the whole per cent → 1 percentage point (ICRP-107 has 81.7 % and 7.17 %). Energies to
    # 0.1 keV → 0.05 keV.
    i131 = get_nuclide("I-131")
    assert _line(i131, 364.5, 0.05).yield_per_decay == pytest.approx(0.81, abs=0.01)
    assert _line(i131, 637.0, 0.05).yield_per_decay == pytest.approx(0.07, abs=0.01)


def test_photon_lines_filters_and_sorts():
    i131 = get_nuclide("I-131")
    lines = i131.photon_lines(min_yield=0.05, min_energy_mev=0.1)
    assert all(ln.radiation.is_photon for ln in lines)
    assert all(ln.yield_per_decay >= 0.05 and ln.energy_mev >= 0.1 for ln in lines)
    energies = [ln.energy_mev for ln in lines]
    assert energies == sorted(energies)
    # 284, 364 and 637 keV are the I-131 gammas above 5 % (ICRP-107: 6.1 %, 81.7 %, 7.2 %)
    assert [round(units.mev_to_kev(e)) for e in energies] == [284, 364, 637]
    with pytest.raises(InputError, match="-1"):
        i131.photon_lines(min_yield=-1)


# --- beta spectrum ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Lu-177", "I-131", "Y-90", "F-18", "Cu-64"])
def test_beta_spectrum_agrees_with_beta_lines(name):
    # The spectrum is tabulated to 4 significant figures on a grid with steps up to ~0.05 MeV
    # near the endpoint; linear interpolation over those steps overestimates the concave tail.
    # Over the whole database this puts ∫E·p dE 0–0.8 % above Σ(mean E × yield) (Lu-177
    # +0.56 %; only N-16 is off more, −2.2 %), and ∫p dE within 0.32 % of Σ yield (N-16 −0.51 %):
    # tolerances 1 % and 0.5 % (binning).
    nuc = get_nuclide(name)
    spec = nuc.beta_spectrum
    assert spec is not None
    beta_types = (RadiationType.BETA_MINUS, RadiationType.BETA_PLUS)
    line_energy = nuc.energy_per_decay_mev(beta_types)
    line_yield = sum(ln.yield_per_decay for ln in nuc.lines if ln.radiation in beta_types)
    assert spec.energy_per_decay_mev() == pytest.approx(line_energy, rel=0.01)
    assert spec.yield_per_decay() == pytest.approx(line_yield, rel=0.005)
    assert spec.mean_energy_mev() == pytest.approx(
        spec.energy_per_decay_mev() / spec.yield_per_decay(), rel=1e-12
    )


def test_beta_spectrum_is_total_of_beta_minus_and_beta_plus():
    # Cu-64 decays both ways (ICRP-107: β⁻ 38.5 %, β⁺ 17.6 %); the one tabulated spectrum holds
    # both: it integrates to their sum (0.5 %, binning as above), not to either alone.
    cu = get_nuclide("Cu-64")
    beta_minus = sum(
        ln.yield_per_decay for ln in cu.lines if ln.radiation is RadiationType.BETA_MINUS
    )
    beta_plus = sum(
        ln.yield_per_decay for ln in cu.lines if ln.radiation is RadiationType.BETA_PLUS
    )
    assert beta_minus > 0.3 and beta_plus > 0.1
    assert cu.beta_spectrum.yield_per_decay() == pytest.approx(beta_minus + beta_plus, rel=0.005)


def test_beta_spectrum_integrals_of_a_known_shape():
    # p(E) = 2(1 − E) on [0, 1] is linear, so the piecewise-linear integrals are exact:
    # ∫p = 1, ∫E·p = 1/3.
    e = np.linspace(0.0, 1.0, 7)
    spec = BetaSpectrum(energy_mev=e, density_per_mev=2.0 * (1.0 - e))
    assert spec.yield_per_decay() == pytest.approx(1.0, rel=1e-12)
    assert spec.energy_per_decay_mev() == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert spec.mean_energy_mev() == pytest.approx(1.0 / 3.0, rel=1e-12)


@pytest.mark.mc
@pytest.mark.parametrize("name", ["Lu-177", "I-131", "Y-90"])
def test_beta_sampling_reproduces_spectrum(name):
    spec = get_nuclide(name).beta_spectrum
    n = 400_000
    sample = spec.sample(n, np.random.default_rng(20240607))
    assert sample.shape == (n,) and sample.dtype == np.float64
    assert sample.min() >= spec.energy_mev[0] and sample.max() <= spec.energy_mev[-1]
    # Mean: the sampler follows the same piecewise-linear density as mean_energy_mev, so only
    # statistics separate them; 5 standard errors (two-sided false alarm ~6e-7, seed fixed).
    se = sample.std(ddof=1) / math.sqrt(n)
    assert abs(sample.mean() - spec.mean_energy_mev()) < 5.0 * se
    # CDF at every grid energy: binomial standard error sqrt(F(1−F)/n), 5σ as above.
    e, p = spec.energy_mev, spec.density_per_mev
    cdf = np.concatenate(([0.0], np.cumsum(0.5 * np.diff(e) * (p[:-1] + p[1:]))))
    cdf /= cdf[-1]
    empirical = np.searchsorted(np.sort(sample), e, side="right") / n
    sigma = np.sqrt(cdf * (1.0 - cdf) / n)
    assert np.all(np.abs(empirical - cdf) <= 5.0 * sigma + 1.0 / n)


@pytest.mark.mc
def test_beta_sampling_inside_an_interval_follows_the_linear_density():
    # One interval, p(E) = 2(1 − E) on [0, 1]: CDF F(E) = 1 − (1 − E)², mean 1/3. A sampler that
    # were uniform inside intervals would give mean 1/2. Tolerances: 5 standard errors.
    spec = BetaSpectrum(np.array([0.0, 1.0]), np.array([2.0, 0.0]))
    n = 200_000
    sample = spec.sample(n, np.random.default_rng(11))
    assert abs(sample.mean() - 1.0 / 3.0) < 5.0 * sample.std(ddof=1) / math.sqrt(n)
    for e in (0.1, 0.3, 0.5, 0.8):
        f = 1.0 - (1.0 - e) ** 2
        assert abs(np.mean(sample <= e) - f) < 5.0 * math.sqrt(f * (1.0 - f) / n)


def test_beta_sampling_is_reproducible_and_validates_input():
    spec = get_nuclide("Lu-177").beta_spectrum
    a = spec.sample(1000, np.random.default_rng(7))
    b = spec.sample(1000, np.random.default_rng(7))
    assert a.tobytes() == b.tobytes()
    assert spec.sample(0, np.random.default_rng(7)).shape == (0,)
    with pytest.raises(InputError, match="-3"):
        spec.sample(-3, np.random.default_rng(7))
    with pytest.raises(InputError, match="Generator"):
        spec.sample(10, 42)


def test_beta_spectrum_validation_and_immutability():
    with pytest.raises(InputError, match="strictly increasing"):
        BetaSpectrum(np.array([0.0, 0.2, 0.1]), np.array([1.0, 1.0, 0.0]))
    with pytest.raises(InputError, match=re.escape("-0.5")):
        BetaSpectrum(np.array([0.0, 0.1, 0.2]), np.array([1.0, -0.5, 0.0]))
    with pytest.raises(InputError, match="shape"):
        BetaSpectrum(np.array([0.0, 0.1]), np.array([1.0, 0.5, 0.0]))
    spec = get_nuclide("Lu-177").beta_spectrum
    with pytest.raises(ValueError, match="read-only"):
        spec.energy_mev[0] = 1.0
    copy = BetaSpectrum(spec.energy_mev.copy(), spec.density_per_mev.copy())
    assert copy == spec and hash(copy) == hash(spec)


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Lu-177", "Lu-177"),
        ("Lu177", "Lu-177"),
        ("177Lu", "Lu-177"),
        ("lu-177", "Lu-177"),
        ("LU177", "Lu-177"),
        (" 177-Lu ", "Lu-177"),
        ("Tc-99m", "Tc-99m"),
        ("Tc99m", "Tc-99m"),
        ("99mTc", "Tc-99m"),
        ("TC-99M", "Tc-99m"),
        ("I-131", "I-131"),
        ("131I", "I-131"),
        ("i 131", "I-131"),
        ("Ir192n", "Ir-192n"),
        ("192nIr", "Ir-192n"),
        ("95Nb", "Nb-95"),
        ("95mNb", "Nb-95m"),
    ],
)
def test_normalise_nuclide_name(spelling, canonical):
    assert normalise_nuclide_name(spelling) == canonical


def test_all_spellings_give_the_same_nuclide():
    spellings = ["Lu-177", "Lu177", "177Lu", "lu-177", "LU177", " 177-Lu "]
    nuclides = [get_nuclide(s) for s in spellings]
    assert all(n is nuclides[0] for n in nuclides)
    assert nuclides[0].name == "Lu-177"
    tc = [get_nuclide(s) for s in ("Tc-99m", "Tc99m", "99mTc")]
    assert tc[0] is tc[1] is tc[2] and tc[0].name == "Tc-99m"
    assert get_nuclide("131I") is get_nuclide("I-131")


@pytest.mark.parametrize("bad", ["Lutetium", "", "177", "Lu-", "Lu-177x", "Xx-12", "Lu-1770"])
def test_unparseable_names_raise_naming_the_input(bad):
    with pytest.raises(NuclideError, match=re.escape(repr(bad))):
        normalise_nuclide_name(bad)
    with pytest.raises(NuclideError, match=re.escape(repr(bad))):
        get_nuclide(bad)


def test_unknown_nuclide_names_input_and_suggests_neighbours():
    with pytest.raises(NuclideError, match=r"'Lu-999'.*not in ICRP-107.*Lu-1\d\d") as info:
        get_nuclide("Lu-999")
    assert "did you mean" in str(info.value)
    with pytest.raises(NuclideError, match=re.escape("'lu-178m2'")):
        get_nuclide("lu-178m2")
    # NuclideError is an InputError, so the CLI reports it as one line
    assert issubclass(NuclideError, InputError)


def test_non_string_name_is_rejected():
    with pytest.raises(NuclideError, match="177"):
        normalise_nuclide_name(177)  # type: ignore[arg-type]


# --- other nuclides, the whole database -------------------------------------------------------


def test_tc99m():
    # Tc-99m: 140.5 keV gamma in 89 % of decays (ICRP-107: 140.511 keV, 89.06 %); energy to
    # 0.1 keV → 0.05 keV, yield to the whole per cent → 0.5 %.
    tc = get_nuclide("Tc-99m")
    assert _line(tc, 140.5, 0.05).yield_per_decay == pytest.approx(0.89, abs=0.005)
    # an isomeric transition: most energy goes to photons
    assert tc.photon_energy_mev_per_decay > 5 * tc.electron_energy_mev_per_decay


def test_y90_is_a_pure_beta_emitter():
    # Y-90: T½ 64.1 h and mean β energy ≈ 0.933 MeV per decay (ICRP-107 index; widely quoted).
    # Half-life as printed in the index; β energy to 3 decimals → 5e-4 MeV.
    y90 = get_nuclide("Y90")
    assert y90.half_life_s == pytest.approx(64.1 * units.HOUR, rel=1e-12)
    assert y90.energy_per_decay_mev(RadiationType.BETA_MINUS) == pytest.approx(0.933, abs=5e-4)
    # discrete photons carry < 1e-5 of the emitted energy (bremsstrahlung is not in ICRP-107)
    assert y90.photon_energy_mev_per_decay < 1e-5 * y90.electron_energy_mev_per_decay
    assert y90.beta_spectrum is not None
    assert y90.beta_spectrum.energy_mev[-1] == pytest.approx(2.2801, abs=1e-9)


def test_positron_emitter_f18():
    # F-18: β⁺ in 96.73 % of decays, each followed by two 511 keV annihilation photons.
    f18 = get_nuclide("F-18")
    beta_plus = [ln for ln in f18.lines if ln.radiation is RadiationType.BETA_PLUS]
    (annihilation,) = [ln for ln in f18.lines if ln.radiation is RadiationType.ANNIHILATION]
    assert sum(ln.yield_per_decay for ln in beta_plus) == pytest.approx(0.9673, abs=1e-9)
    assert annihilation.energy_mev == pytest.approx(0.511, abs=1e-3)
    assert annihilation.yield_per_decay == pytest.approx(2 * 0.9673, rel=1e-6)


def test_alpha_emitter_ac225():
    ac = get_nuclide("Ac-225")
    # ICRP-107: alpha yields sum to 1 (every decay is alpha), mean ≈ 5.79 MeV; the yields are
    # printed to 6 significant figures, hence 1e-5.
    alphas = [ln for ln in ac.lines if ln.radiation is RadiationType.ALPHA]
    assert sum(ln.yield_per_decay for ln in alphas) == pytest.approx(1.0, abs=1e-5)
    assert 5.7 < ac.energy_per_decay_mev("alpha") < 5.9
    assert ac.energy_per_decay_mev(RadiationType.OTHER) > 0  # alpha recoil
    assert ac.beta_spectrum is None


def test_every_database_nuclide_loads():
    names = available_nuclides()
    assert len(names) == 1252  # ICRP-107: 1252 radionuclides of 97 elements
    assert len({n.split("-")[0] for n in names}) == 97
    assert {"Lu-177", "I-131", "Tc-99m", "Y-90", "Ac-225"} <= set(names)
    for name in names:
        nuc = get_nuclide(name)
        assert nuc.name == name
        assert normalise_nuclide_name(name) == name
        assert math.isfinite(nuc.half_life_s) and nuc.half_life_s > 0
        assert nuc.daughters == ()  # the database has no decay chains
        if nuc.beta_spectrum is not None:
            betas = sum(
                ln.yield_per_decay
                for ln in nuc.lines
                if ln.radiation in (RadiationType.BETA_MINUS, RadiationType.BETA_PLUS)
            )
            # binning tolerance as in test_beta_spectrum_agrees_with_beta_lines (max seen 0.51 %)
            assert nuc.beta_spectrum.yield_per_decay() == pytest.approx(betas, rel=0.006), name


# --- records ----------------------------------------------------------------------------------


def test_to_dict_is_json_ready_and_complete():
    lu = get_nuclide("Lu-177")
    d = json.loads(json.dumps(lu.to_dict()))
    assert d["name"] == "Lu-177"
    assert d["half_life_s"] == lu.half_life_s
    assert d["decay_constant_per_s"] == lu.decay_constant_per_s
    assert d["electron_energy_mev_per_decay"] == lu.electron_energy_mev_per_decay
    assert d["photon_energy_mev_per_decay"] == lu.photon_energy_mev_per_decay
    assert set(d["energy_per_decay_mev_by_type"]) == {t.value for t in RadiationType}
    assert d["energy_per_decay_mev_by_type"]["beta-"] == pytest.approx(0.13327, abs=1e-5)
    assert len(d["lines"]) == len(lu.lines)
    assert d["lines"][0].keys() == {"radiation", "energy_mev", "yield_per_decay"}
    assert {ln["radiation"] for ln in d["lines"]} <= {t.value for t in RadiationType}
    assert d["daughters"] == []
    assert d["source"] == ICRP107_SOURCE
    assert "10.1016/j.icrp.2008.10.004" in d["source"]


def test_dataclasses_are_frozen_and_validated():
    lu = get_nuclide("Lu-177")
    with pytest.raises(AttributeError):
        lu.half_life_s = 1.0  # type: ignore[misc]
    with pytest.raises(InputError, match="-2"):
        EmissionLine(RadiationType.GAMMA, 0.1, -2)
    with pytest.raises(InputError, match="'photon'"):
        EmissionLine("photon", 0.1, 0.5)  # type: ignore[arg-type]
    assert EmissionLine("gamma", 0.1, 0.5).radiation is RadiationType.GAMMA  # type: ignore[arg-type]
    with pytest.raises(InputError, match="half_life_s"):
        Nuclide(name="X-1", half_life_s=0.0, lines=())
    with pytest.raises(InputError, match=re.escape("1.5")):
        Nuclide(name="X-1", half_life_s=1.0, lines=(), daughters=(("Y-1", 1.5),))
    assert "Lu-177" in repr(lu) and len(repr(lu)) < 200


def test_import_is_cheap():
    # Importing the module must not read the database (DESIGN.md: importing is cheap).
    code = (
        "import sys, dosimetry.nuclides; "
        "assert 'icrp107_database' not in sys.modules, 'database imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
