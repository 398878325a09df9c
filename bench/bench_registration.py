"""Registration: accuracy against the true motion of digital patients, activity conservation,
and the wall time of the registration stage on a 4-timepoint study.

* Held-out digital patients (seeds never used by tests or training): default acquisition
  (2.5 × 2.5 × 3 mm CT, 4.8 mm SPECT voxels, 4 timepoints), rigid repositioning only (the
  generator's default) and with a 3 mm smooth deformation added.
* Per study and method (classical rigid → affine → B-spline; learned = rigid + network): mean
  and maximum TRE over the reference body before and after registration, the largest raw
  change of the in-field activity by resampling (before the conservation correction), the
  smallest Jacobian determinant and folding, and the stage's wall time with ITK and torch
  limited to 2 threads (the target machine).

Target (issue): mean TRE below one SPECT voxel; registration of a 4-timepoint study plus
segmentation under 2 min on 2 cores. Prints figures; never passes or fails on time.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

#: Held-out phantom seeds (tests use 21–23; training 1000+, its held-out set 5000+).
SEEDS = (910_001, 910_002, 910_003)
THREADS = 2


def _study(folder: Path, seed: int, deformation_mm: float, quick: bool):
    from phantoms import GridSpec, PatientConfig, make_patient

    kw = {}
    if quick:
        kw = {"grid": GridSpec(inplane_mm=6.0, slice_mm=6.0), "spect_spacing_mm": 9.5904,
              "spect_matrix": 64}
    return make_patient(folder / f"p{seed}_{deformation_mm:g}",
                        PatientConfig(seed=seed, output_format="nifti",
                                      deformation_mm=deformation_mm, **kw))


def _row(name: str, res, spect_mm: float) -> str:
    tps = [t.qa for t in res.timepoints if not t.qa.is_reference]
    tre_b = max(q.tre_before.mean_mm for q in tps)
    tre = [q.tre.mean_mm for q in tps]
    tre_max = max(q.tre.max_mm for q in tps)
    act = max(abs(a.relative_change_raw) for q in tps for a in q.activity)
    jmin = min(q.jacobian.min for q in tps)
    fold = max(q.jacobian.fraction_nonpositive for q in tps)
    dice = min(q.dice_mean for q in tps if q.dice_mean is not None)
    return (f"  {name:<28} TRE before ≤{tre_b:5.2f}  after mean {min(tre):4.2f}–{max(tre):4.2f}"
            f" (max {tre_max:5.2f}) mm [{max(tre) / spect_mm:.2f} SPECT voxel]  "
            f"activity Δraw ≤{act * 100:.2f} %  Jacobian min {jmin:.3f} folding {fold:.1e}  "
            f"Dice mean ≥{dice:.3f}  {res.time_s:5.1f} s")


def run(quick: bool = False) -> None:
    import SimpleITK as sitk
    import torch

    from dosimetry.registration import register_study
    from dosimetry.study.images import load_spect_bq_per_ml
    from dosimetry.study.workdir import WorkDir

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
    torch.set_num_threads(THREADS)
    seeds = SEEDS[:1] if quick else SEEDS
    print(f"ITK and torch threads: {THREADS}; seeds {list(seeds)}; "
          f"{'quick (6 mm CT grid)' if quick else 'default acquisition grid'}")
    with tempfile.TemporaryDirectory(prefix="rptdose-bench-reg-") as tmp:
        root = Path(tmp)
        for deformation in (0.0, 3.0):
            print("\nmotion: rigid repositioning"
                  + (f" + {deformation:g} mm smooth deformation" if deformation else " only"))
            for seed in seeds:
                t0 = time.perf_counter()
                pat = _study(root, seed, deformation, quick)
                t_make = time.perf_counter() - t0
                study = pat.study
                spect_mm = min(load_spect_bq_per_ml(study, study.timepoints[0],
                                                    pat.out_dir).GetSpacing())
                ct_size = sitk.ReadImage(str(pat.out_dir / study.timepoints[0].ct.path)
                                         ).GetSize()
                print(f" seed {seed}: {len(study.timepoints)} timepoints, CT {ct_size}, "
                      f"SPECT voxel {spect_mm:.2f} mm (phantom made in {t_make:.0f} s)")
                for method in ("classical", "learned"):
                    wd = WorkDir.create(root / f"w{seed}_{deformation:g}_{method}", study,
                                        pat.out_dir)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # announced fallbacks; not timed here
                        res = register_study(wd, method=method, force=True)
                    print(_row(method, res, spect_mm))
