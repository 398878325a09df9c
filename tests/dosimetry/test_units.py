"""Units: exact conversions and round trips."""

import math

from hypothesis import given
from hypothesis import strategies as st

from dosimetry import units

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


def test_exact_factors():
    # Definitions, not measurements: these must hold to floating-point rounding.
    assert units.mbq_h_to_bq_s(1.0) == 3.6e9
    assert units.HOUR == 3600.0 and units.DAY == 86400.0
    assert units.mev_to_joule(1.0) == 1.602176634e-13
    assert units.MCI == 3.7e7
    assert math.isclose(units.voxel_volume_ml((4.0, 4.0, 4.0)), 0.064)


def test_lu177_electron_energy_per_mbq_h():
    # physics.md: Lu-177 deposits 0.08532 mJ of electron energy per MBq·h (0.14792 MeV/decay);
    # 4-significant-figure reference → relative tolerance 1e-4.
    e_j = units.mev_to_joule(0.14792) * units.mbq_h_to_bq_s(1.0)
    assert math.isclose(e_j * 1e3, 0.08532, rel_tol=1e-4)


@given(finite)
def test_round_trips(x):
    assert math.isclose(units.bq_to_mbq(units.mbq_to_bq(x)), x, rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(units.s_to_hours(units.hours_to_s(x)), x, rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(units.bq_s_to_mbq_h(units.mbq_h_to_bq_s(x)), x, rel_tol=1e-12,
                        abs_tol=1e-300)
    assert math.isclose(units.mev_to_kev(units.kev_to_mev(x)), x, rel_tol=1e-12, abs_tol=1e-300)
