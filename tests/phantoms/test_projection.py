"""Projection-space SPECT simulation: forward model against analytic attenuation, seeding,
TEW consistency, reconstruction of a uniform cylinder, and the generator options."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from phantoms.acquisition import SpectModel, default_acquisition, make_image
from phantoms.projection import (
    ProjectionModel,
    default_projection_model,
    orbit_radius_mm,
    reconstruct_projections,
    scale_counts,
    simulate_projections,
    simulate_spect_projection,
    tew_scatter,
)

N, NZ, S = 32, 12, 9.6  # a small grid: 32² × 12 voxels of 9.6 mm
MU_WATER = 0.0135  # 1/mm, about water at 208 keV (the test only needs a value)
R_CYL = 100.0


def _grid(n=N, nz=NZ, s=S) -> sitk.Image:
    g = sitk.Image(n, n, nz, sitk.sitkFloat32)
    g.SetSpacing((s, s, s))
    g.SetOrigin((-(n - 1) / 2 * s, -(n - 1) / 2 * s, -(nz - 1) / 2 * s))
    return g


def _water_cylinder_mu() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """μ map of an infinite water cylinder (radius 100 mm) with exact partial-area voxels."""
    c = (np.arange(N) - (N - 1) / 2) * S
    y, x = np.meshgrid(c, c, indexing="ij")
    occ = np.zeros((N, N))
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    for oy in sub:
        for ox in sub:
            occ += np.hypot(x + ox * S, y + oy * S) <= R_CYL
    occ /= 16
    return np.repeat((occ * MU_WATER)[None], NZ, 0).astype(np.float32), x, y


def _blob(x, y, activity_bq: float) -> np.ndarray:
    """A Gaussian source (σ = 1.5 voxels) on the axis: smooth enough that the projector's
    rotations conserve it (a single-voxel point loses ~3 % to bilinear interpolation)."""
    z = ((np.arange(NZ) - (NZ - 1) / 2) * S)[:, None, None]
    w = np.exp(-(x[None] ** 2 + y[None] ** 2 + z ** 2) / (2 * (1.5 * S) ** 2))
    return w / w.sum() * activity_bq


@pytest.fixture(scope="module")
def point_in_water():
    mu, x, y = _water_cylinder_mu()
    act = _blob(x, y, 1e6)
    spec = default_acquisition("Lu-177")
    model = default_projection_model("Lu-177")
    data = simulate_projections(act, mu, _grid(), spec, model, np.random.default_rng(7))
    return act, mu, x, y, spec, model, data


def test_total_counts_follow_sensitivity_time_activity_and_survival(point_in_water):
    act, mu, x, y, spec, model, data = point_in_water
    # analytic survival: each source point sees the chord √(R² − u²) − v to the cylinder
    # surface towards the detector (the source and the cylinder are symmetric about the axis,
    # so every view has the same mean survival)
    w = act / act.sum()
    chord = np.sqrt(np.maximum(R_CYL ** 2 - x ** 2, 0.0)) - y
    survival = float((w * np.exp(-MU_WATER * chord)[None]).sum())
    expected = spec.sensitivity_cps_per_bq * spec.frame_duration_s * act.sum() * survival
    # tolerance 1 %: rotations with bilinear interpolation (≤ 0.3 % for this smooth source),
    # PyTomography's attenuation sum counting half the source voxel, and partial-area μ voxels
    # at the cylinder's edge; measured 0.25 %
    assert data.expected_primary.sum(dtype=np.float64) == pytest.approx(expected, rel=0.01)
    per_view = data.expected_primary.sum(axis=(1, 2), dtype=np.float64)
    assert per_view.min() / per_view.max() > 0.98  # no view is special
    # without attenuation the projector conserves activity: 1 Bq·s in air → S counts
    free = simulate_projections(act, np.zeros_like(mu), _grid(), spec, model, None)
    assert free.expected_primary.sum(dtype=np.float64) == pytest.approx(
        spec.sensitivity_cps_per_bq * spec.frame_duration_s * act.sum(), rel=0.005)


def test_scatter_and_tew_windows_are_consistent(point_in_water):
    *_, model, data = point_in_water
    k = model.scatter_to_primary
    ratio = data.expected_scatter.sum() / data.expected_primary.sum()
    # the blur only loses what falls off the 12-slice detector
    assert 0.85 * k < ratio <= k * (1 + 1e-6)
    # TEW of the expected side windows gives back the photopeak scatter (trapezoid model)
    nf = scale_counts(data, data.expected_total, None)
    np.testing.assert_allclose(tew_scatter(nf), data.expected_scatter, rtol=1e-5,
                               atol=1e-6 * float(data.expected_scatter.max()))
    # Poisson totals within 4 σ of their expectation; the side windows expect
    # S·2(w_lo + r·w_hi)/(W(1 + r)) for photopeak scatter S (trapezoid, r = upper/lower)
    r = model.upper_to_lower_scatter
    side = float(data.expected_scatter.sum(dtype=np.float64)) * 2 * (
        model.lower_width_kev + r * model.upper_width_kev) / (model.peak_width_kev * (1 + r))
    for counts, mean in ((data.photopeak, data.expected_total), (data.lower + data.upper, side)):
        assert abs(counts.sum(dtype=np.float64) - mean) < 4 * math.sqrt(mean)
    assert np.all(data.photopeak == np.round(data.photopeak))


def test_same_seed_same_projections_other_seed_others(point_in_water):
    act, mu, *_, spec, model, data = point_in_water
    again = simulate_projections(act, mu, _grid(), spec, model, np.random.default_rng(7))
    for a, b in ((data.photopeak, again.photopeak), (data.lower, again.lower),
                 (data.upper, again.upper)):
        assert a.tobytes() == b.tobytes()
    other = simulate_projections(act, mu, _grid(), spec, model, np.random.default_rng(8))
    assert other.photopeak.tobytes() != data.photopeak.tobytes()
    # a count level rescales the expectation and the calibration (time per view) together
    low = scale_counts(data, 1e4, np.random.default_rng(1))
    assert low.expected_total == pytest.approx(1e4, rel=1e-6)
    assert low.time_per_view_s / data.time_per_view_s == pytest.approx(
        1e4 / data.expected_total, rel=1e-9)


def test_uniform_cylinder_reconstructs_to_its_concentration():
    """Noise-free projections of a uniform water cylinder through the reconstruction package.

    The central region must come back within 5 %: OSEM 4 × 5 with CDR modelling is not
    converged at the edges (they are excluded), and inside a large uniform region the
    remaining errors are the projector's discretisation (≤ 1 %, above) and the TEW estimate,
    which is exact for noise-free data in this model."""
    s = 9.6
    n, nz = 32, 16
    fine = 4.8
    xs = np.arange(-150.0, 150.0 + 1e-9, fine)
    zs = np.arange(-90.0, 90.0 + 1e-9, fine)
    z3, y3, x3 = np.meshgrid(zs, xs, xs, indexing="ij")
    inside = (np.hypot(x3, y3) <= 90.0) & (np.abs(z3) <= 60.0)
    conc = 50e3  # Bq/mL
    vox_ml = fine ** 3 / 1000.0
    origin = (xs[0], xs[0], zs[0])
    act = make_image((inside * conc * vox_ml).astype(np.float32), (fine,) * 3, origin)
    hu = make_image(np.where(inside, 0.0, -1000.0).astype(np.float32), (fine,) * 3, origin)
    spec = replace(default_acquisition("Lu-177"), n_views=30)
    model = default_projection_model("Lu-177", n_views=30, subsets=5)
    res = simulate_spect_projection(act, hu, _grid(n, nz, s), None, spec, "Lu-177", None,
                                    model=model)
    img = sitk.GetArrayFromImage(res.bq_per_ml)
    c = (n - 1) / 2
    yy, xx = np.mgrid[0:n, 0:n]
    central = np.hypot(yy - c, xx - c) * s < 50.0
    mean = float(img[nz // 2 - 2:nz // 2 + 2][:, central].mean())
    assert mean == pytest.approx(conc, rel=0.05)
    assert res.recon_info["reconstruction"]["corrections"] == ["attenuation", "scatter", "psf"]
    # outside the cylinder (beyond 2 voxels of its edge) the image is near 0
    outside = np.hypot(yy - c, xx - c) * s > 90.0 + 2 * s
    assert float(img[nz // 2][outside].mean()) < 0.02 * conc
    assert res.counts_total == pytest.approx(res.expected_total, rel=1e-5)  # noise-free


def test_orbit_clears_the_body():
    mu, *_ = _water_cylinder_mu()
    r = orbit_radius_mm(mu, S, 30.0)
    assert R_CYL + 30.0 <= r <= R_CYL + 30.0 + 2 * S


def test_model_validation_names_the_value():
    with pytest.raises(InputError, match=r"number of views 7 is outside 8–256"):
        default_projection_model("Lu-177", n_views=7)
    with pytest.raises(InputError, match=r"does not contain the photopeak 208.366"):
        replace(default_projection_model("Lu-177"), peak_window_kev=(100.0, 150.0))
    with pytest.raises(InputError, match=r"no projection-SPECT defaults for nuclide 'Tc-99m'"):
        default_projection_model("Tc-99m")
    assert isinstance(default_projection_model("I-131"), ProjectionModel)
    with pytest.raises(InputError, match="isotropic"):
        g = _grid()
        g.SetSpacing((S, S, 2 * S))
        simulate_projections(np.zeros((NZ, N, N)), np.zeros((NZ, N, N)), g,
                             default_acquisition("Lu-177"), default_projection_model("Lu-177"),
                             None)


def test_reconstruction_without_corrections_is_offered(point_in_water):
    *_, data = point_in_water
    img, rec = reconstruct_projections(data, None, scatter=False, iterations=1, subsets=4)
    assert rec.corrections == ("psf",)
    assert img.GetSize() == (N, N, NZ)


def test_generator_option_is_validated_and_left_out_of_the_default_digest():
    from phantoms import IECConfig, PatientConfig

    assert "spect_model" not in PatientConfig().to_dict()
    cfg = PatientConfig(spect_model="projection")
    assert cfg.spect_model is SpectModel.PROJECTION
    assert cfg.to_dict()["spect_model"] == "projection"
    assert cfg.digest() != PatientConfig().digest()
    with pytest.raises(InputError, match="unknown SPECT model 'monte-carlo'"):
        PatientConfig(spect_model="monte-carlo")
    assert IECConfig(spect_model="projection").spect_model is SpectModel.PROJECTION
    with pytest.raises(InputError, match="unknown SPECT model 'x'"):
        IECConfig(spect_model="x")


@pytest.mark.slow
def test_patient_and_iec_in_projection_mode_are_seeded(tmp_path):
    """make_patient and make_iec with ``spect_model=projection`` (one timepoint, 64² grid):
    same seed → byte-identical SPECT; the truth records the model."""
    from phantoms import GridSpec, IECConfig, PatientConfig, make_iec, make_patient

    cfg = PatientConfig(seed=3, output_format="nifti", n_lesions=1, timepoints_h=(24.0,),
                        grid=GridSpec(inplane_mm=6.0, slice_mm=6.0), spect_spacing_mm=9.5904,
                        spect_matrix=64, spect_model="projection")
    a = make_patient(tmp_path / "a", cfg)
    b = make_patient(tmp_path / "b", cfg)
    pa = (a.out_dir / "nifti").glob("*_spect.nii.gz")
    for p in pa:
        assert p.read_bytes() == (b.out_dir / "nifti" / p.name).read_bytes()
    truth = (a.out_dir / "truth" / "truth.json").read_bytes()
    assert truth == (b.out_dir / "truth" / "truth.json").read_bytes()
    assert a.truth["acquisition"]["spect_model"] == "projection"
    assert a.truth["simplifications"][0].startswith("SPECT: projection-space")
    tp = a.truth["timepoints"][0]["spect"]
    assert tp["projection"]["reconstruction"]["corrections"] == ["attenuation", "scatter", "psf"]
    # the reconstruction holds the activity in the field of view to within partial volume
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(next((a.out_dir / "nifti").glob(
        "*_spect.nii.gz")))))
    total_mbq = img.sum(dtype=np.float64) * 9.5904 ** 3 / 1e3 / 1e6
    assert total_mbq == pytest.approx(tp["activity_in_spect_grid_mbq"], rel=0.1)
    iec = make_iec(tmp_path / "iec", IECConfig(ct_spacing_mm=4.0, spect_spacing_mm=9.5904,
                                               spect_matrix=64, spect_model="projection"))
    assert iec.truth["spect"]["spect_model"] == "projection"
    assert iec.truth["spect"]["total_counts"] > 1e5
