"""Emission selection and the per-decay source description."""

import pytest

from dosimetry.dose.emissions import (
    ALL_EMISSIONS,
    Emission,
    emissions_label,
    parse_emissions,
    source_spectrum,
)
from dosimetry.errors import InputError
from dosimetry.nuclides import get_nuclide


def test_parse_emissions_forms():
    assert parse_emissions(None) == ALL_EMISSIONS
    assert parse_emissions("all") == ALL_EMISSIONS
    assert parse_emissions("x, Beta,gamma") == (Emission.BETA, Emission.GAMMA, Emission.X)
    assert parse_emissions("electrons") == (Emission.BETA, Emission.IC, Emission.AUGER)
    assert parse_emissions(["photons"]) == (Emission.GAMMA, Emission.X)
    assert emissions_label([Emission.X, Emission.BETA]) == "beta,x"
    with pytest.raises(InputError, match="unknown emission 'alpha'"):
        parse_emissions("beta,alpha")
    with pytest.raises(InputError, match="no emission selected"):
        parse_emissions(" , ")


@pytest.mark.parametrize("name", ["Lu-177", "I-131"])
def test_energy_per_decay_equals_icrp107(name):
    nuc = get_nuclide(name)
    spec = source_spectrum(nuc, "all")
    # β particles carry the weight that makes the spectrum's energy equal the ICRP-107 branch
    # sum, so the budget matches the nuclide data to float rounding
    assert spec.electron_energy_per_decay_mev == pytest.approx(
        nuc.electron_energy_mev_per_decay, rel=1e-12)
    assert spec.photon_energy_per_decay_mev == pytest.approx(
        nuc.photon_energy_mev_per_decay, rel=1e-12)
    # the weight corrects a 0.4–0.6 % excess of the interpolated spectrum (nuclides.py)
    assert 0.99 < spec.beta_weight < 1.0


def test_physics_md_energies():
    # physics.md: Lu-177 electrons 0.14792 MeV, photons 0.03509 MeV per decay; β alone
    # 133.3 keV (EJNMMI Phys 2020 Table 1); I-131 electrons 0.19184, photons 0.38275
    lu = source_spectrum("Lu-177", "beta")
    assert lu.electron_energy_per_decay_mev == pytest.approx(0.1333, abs=1e-4)
    assert source_spectrum("Lu-177").energy_per_decay_mev == pytest.approx(0.14792 + 0.03509,
                                                                          abs=2e-5)
    i131 = source_spectrum("I-131", "gamma,x")
    assert i131.photon_energy_per_decay_mev == pytest.approx(0.38275, abs=1e-5)
    assert i131.electron_energy_per_decay_mev == 0.0


def test_positron_emitters_refused():
    with pytest.raises(InputError, match="F-18 emits .* positrons"):
        source_spectrum("F-18")
