"""Anatomy: labels, CT numbers, variability with the seed, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from dosimetry.errors import InputError
from phantoms.anatomy import (
    LESION_LABEL_BASE,
    TISSUES,
    AnatomyOptions,
    GridSpec,
    Kind,
    LesionSite,
    make_anatomy,
    smooth_field,
    tissue,
)

GRID = GridSpec(inplane_mm=5.0, slice_mm=5.0)


@pytest.fixture(scope="module")
def anat():
    opts = AnatomyOptions(head_neck=True, n_lesions=5, thyroid_remnant=True,
                          lesion_sites=(LesionSite.LIVER, LesionSite.BONE,
                                        LesionSite.LYMPH_NODE, LesionSite.LUNG))
    return make_anatomy(np.random.default_rng(3), opts, GRID)


def test_label_table_names_and_ids_are_unique():
    names = [t.name for t in TISSUES]
    ids = [t.label for t in TISSUES]
    assert len(set(names)) == len(names) and len(set(ids)) == len(ids)
    assert max(ids) < LESION_LABEL_BASE
    for required in ("liver", "spleen", "kidney_left", "kidney_right", "lung_left",
                     "lung_right", "urinary_bladder", "vertebrae", "ribs", "hip_left",
                     "hip_right", "red_marrow", "body", "parotid_gland_left",
                     "parotid_gland_right", "submandibular_gland_left",
                     "submandibular_gland_right"):
        assert required in names
    for t in TISSUES:
        assert 0.0 < t.density_g_per_cm3 < 2.5, t


def test_every_structure_is_present(anat):
    present = set(np.unique(anat.labels[anat.core]).tolist())
    for t in TISSUES:
        assert t.label in present, f"{t.name} missing"
    assert len(anat.lesions) == 5
    for les in anat.lesions:
        assert les.label in present


def test_organs_lie_inside_the_field_of_view(anat):
    organs = [t.label for t in TISSUES if t.kind in (Kind.ORGAN, Kind.BLOOD)]
    pad = np.concatenate([anat.labels[: anat.core.start], anat.labels[anat.core.stop:]])
    assert not np.isin(pad, organs).any()
    assert not (pad > LESION_LABEL_BASE).any()


def test_organ_volumes_are_adult_sized(anat):
    vox = anat.grid.voxel_volume_ml
    vol = {t.name: float((anat.labels == t.label).sum()) * vox for t in TISSUES}
    # broad adult ranges (ICRP 89 reference masses ± generous spread) [mL]
    assert 1000 < vol["liver"] < 3200
    assert 80 < vol["spleen"] < 500
    for k in ("kidney_left", "kidney_right"):
        assert 80 < vol[k] < 350
    assert 1500 < vol["lung_left"] + vol["lung_right"] < 9000
    assert 10 < vol["parotid_gland_left"] < 70
    assert 0.3 < vol["thyroid_gland"] < 15


def test_ct_numbers_are_realistic(anat):
    hu, lab = anat.hu, anat.labels

    def median(name):
        return float(np.median(hu[lab == tissue(name).label]))

    assert -1000 <= float(np.median(hu[:, 0, 0])) <= -990  # air corner
    assert -870 < median("lung_left") < -680
    assert -130 < median("subcutaneous_fat") < -70
    assert 30 < median("liver") < 75
    assert 20 < median("kidney_left") < 55
    assert 20 < median("body") < 65
    assert 150 < median("red_marrow") < 350
    # cortical bone: shells are thin, so the upper tail carries the cortical value
    assert 650 < float(np.percentile(hu[lab == tissue("vertebrae").label], 90)) < 1250


def test_same_seed_same_anatomy_other_seed_other_shapes():
    opts = AnatomyOptions(n_lesions=2)
    a = make_anatomy(np.random.default_rng(7), opts, GRID)
    b = make_anatomy(np.random.default_rng(7), opts, GRID)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.hu, b.hu)
    c = make_anatomy(np.random.default_rng(8), opts, GRID)
    # not just a rescaled copy: align the livers' centroids, scale to equal volume, compare
    liver = tissue("liver").label

    def normalised_points(an):
        pts = np.argwhere(an.labels == liver) * np.array(an.grid.spacing[::-1])
        pts = pts - pts.mean(axis=0)
        return pts / np.cbrt(len(pts))

    pa, pc = normalised_points(a), normalised_points(c)
    cov_a, cov_c = np.cov(pa.T), np.cov(pc.T)
    assert not np.allclose(cov_a, cov_c, rtol=0.05)  # different shape, not only size


def test_invalid_options_name_the_value():
    with pytest.raises(InputError, match="number of lesions 31"):
        AnatomyOptions(n_lesions=31)
    with pytest.raises(InputError, match="lesion diameter range 2.0"):
        AnatomyOptions(lesion_diameter_mm=(2.0, 50.0))
    with pytest.raises(InputError, match="inplane_mm=20"):
        GridSpec(inplane_mm=20)
    with pytest.raises(InputError, match="thyroid remnant needs"):
        AnatomyOptions(thyroid_remnant=True, head_neck=False)


def test_smooth_field_is_smooth_and_standardised():
    rng = np.random.default_rng(0)
    f = smooth_field((40, 50, 60), (3.0, 2.5, 2.5), 40.0, rng)
    assert f.shape == (40, 50, 60) and f.dtype == np.float32
    assert 0.4 < float(f.std()) < 1.6
    # neighbouring voxels (2.5 mm apart) are strongly correlated for a 40 mm field
    r = np.corrcoef(f[:, :, :-1].ravel(), f[:, :, 1:].ravel())[0, 1]
    assert r > 0.95
