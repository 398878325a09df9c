"""Collimator table and the Gaussian collimator–detector response."""

from __future__ import annotations

import numpy as np
import pytest

from dosimetry.errors import InputError
from dosimetry.reconstruction.collimator import (
    FWHM_TO_SIGMA,
    collimator_table,
    psf_model,
    resolve_collimator,
)


def test_table_holds_the_vendor_collimators():
    t = collimator_table()
    # SIMIND database values (cm in the file): G8-MEGP hole 0.35, septa 0.105, length 5.8
    assert (t["G8-MEGP"].hole_diameter_mm, t["G8-MEGP"].hole_length_mm) == (3.5, 58.0)
    assert t["SY-ME"].hole_diameter_mm == pytest.approx(2.94)
    assert "GE-PH02" not in t  # pinholes are not parallel-hole collimators


@pytest.mark.parametrize(("name", "maker", "code"), [
    ("MEGP", "GE MEDICAL SYSTEMS", "G8-MEGP"),
    ("LEHR", "GE Healthcare", "G8-LEHR"),
    ("ME", "SIEMENS NM", "SY-ME"),
    ("MELP", "Siemens Healthineers", "SY-ME"),
    ("me-gp", "Philips", "PB-MEGP"),
    ("sy-he", None, "SY-HE"),  # a table code is taken as it is
])
def test_header_names_resolve(name, maker, code):
    spec = resolve_collimator(name, maker)
    assert spec.code == code
    assert spec.header_name == name


def test_unknown_collimator_message_names_file_tag_value_and_way_out():
    with pytest.raises(InputError, match=r"bed1.dcm: CollimatorGridName \(0018,1180\) 'XMEGP' "
                                         r"\(manufacturer 'GE MEDICAL SYSTEMS'\) is not a known "
                                         r"collimator; known header names: .*MEGP.*--no-psf"):
        resolve_collimator("XMEGP", "GE MEDICAL SYSTEMS", "bed1.dcm")
    with pytest.raises(InputError, match=r"CollimatorGridName \(0018,1180\) is absent"):
        resolve_collimator("", "ACME", "a.dcm")


def test_psf_matches_pytomography_construction(pyt):
    """b and c equal PyTomography's; a differs only through μ_Pb (xraylib 1.03/mm at 208 keV
    vs PyTomography's fit across the K edge), by < 2 %."""
    from pytomography.io.SPECT.dicom import get_psfmeta_from_scanner_params

    m = psf_model("G8-MEGP", 208.366, intrinsic_fwhm_mm_140kev=3.8)
    ref = get_psfmeta_from_scanner_params("G8-MEGP", 208.366, intrinsic_resolution_140keV=0.38)
    a, b, c = ref.sigma_fit_params
    assert m.intercept_mm / 10 == pytest.approx(b, rel=1e-9)
    assert m.intrinsic_sigma_mm / 10 == pytest.approx(c, rel=1e-9)
    assert m.slope == pytest.approx(a, rel=0.02)
    # NIST XCOM lead (11.35 g/cm³): 200 keV 0.9985 cm²/g → 1.133/mm; 300 keV 0.4031 cm²/g →
    # 0.458/mm; 208 keV lies between, near the 200 keV value
    assert 0.9 < m.mu_lead_per_mm < 1.133


def test_psf_geometry_numbers():
    m = psf_model("G8-MEGP", 208.366, intrinsic_fwhm_mm_140kev=0.0)
    l_eff = 58.0 - 2.0 / m.mu_lead_per_mm
    # geometric FWHM D (L_eff + d)/L_eff at 100 mm
    assert float(m.fwhm_mm(100.0)) == pytest.approx(3.5 * (l_eff + 100.0) / l_eff, rel=1e-9)
    assert float(m.sigma_mm(0.0)) == pytest.approx(3.5 * FWHM_TO_SIGMA)
    with_intrinsic = psf_model("G8-MEGP", 208.366, intrinsic_fwhm_mm_140kev=3.8)
    d = np.array([0.0, 100.0, 300.0])
    assert np.all(np.diff(with_intrinsic.fwhm_mm(d)) > 0)
    # intrinsic 3.8 mm at 140 keV scales as E^-1/2: 3.8·(208.366/140)^-0.5 = 3.115 mm
    assert with_intrinsic.intrinsic_sigma_mm / FWHM_TO_SIGMA == pytest.approx(3.115, abs=1e-3)
    with pytest.raises(InputError, match=r"outside 20–1000 keV"):
        psf_model("G8-MEGP", 5.0)
