"""DICOM ingestion speed: header scan and CT series reading against SimpleITK/GDCM.

Writes a synthetic CT series (one file per slice, as scanners export) and an NM SPECT with the
project's own writer, then times, in the same process:

* ``scan_dicom_folder`` (headers only) — files/s;
* ``read_ct_series`` against ``SimpleITK.ImageSeriesReader`` (GDCM), the baseline most open tools
  use — and checks both give the same voxels;
* ``read_nm_image`` for a 128×128×128 SPECT.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _best_of(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False) -> None:
    from dosimetry.io.dicom import read_ct_series, read_nm_image, scan_dicom_folder
    from dosimetry.io.dicom_write import (
        DicomSeriesMeta,
        NMMeta,
        uid_from_seed,
        write_ct_series,
        write_nm_spect,
    )

    n_xy, n_z = (256, 60) if quick else (512, 200)
    rng = np.random.default_rng(0)
    ct = sitk.GetImageFromArray(rng.normal(40, 20, (n_z, n_xy, n_xy)).astype(np.float32))
    ct.SetSpacing((0.98, 0.98, 2.5))
    spect = sitk.GetImageFromArray(rng.gamma(2.0, 500.0, (128, 128, 128)).astype(np.float32))
    spect.SetSpacing((4.8, 4.8, 4.8))
    t = datetime(2024, 1, 1, 10, 0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = dict(patient_id="BENCH", study_uid=uid_from_seed("s"),
                      frame_of_reference_uid=uid_from_seed("f"), acquisition_datetime=t)
        t0 = time.perf_counter()
        write_ct_series(ct, root / "ct", DicomSeriesMeta(series_uid=uid_from_seed("c"), **common))
        t_write = time.perf_counter() - t0
        write_nm_spect(spect, root / "nm.dcm",
                       DicomSeriesMeta(series_uid=uid_from_seed("n"), **common),
                       NMMeta(units="Bq/mL", nuclide="Lu-177"))
        print(f"CT series {n_xy}×{n_xy}×{n_z} written in {t_write:.2f} s "
              f"({n_z / t_write:.0f} slices/s)")

        t_scan, scan = _best_of(lambda: scan_dicom_folder(root))
        n_files = sum(len(s.files) for s in scan.series)
        print(f"scan_dicom_folder: {n_files} files in {t_scan:.3f} s "
              f"({n_files / t_scan:.0f} files/s)")

        files = [str(p) for p in sorted((root / "ct").iterdir())]

        def gdcm():
            reader = sitk.ImageSeriesReader()
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(root / "ct"))
            reader.SetFileNames(names)
            return reader.Execute()

        t_ours, ours = _best_of(lambda: read_ct_series(files))
        t_base, base = _best_of(gdcm)
        diff = float(np.abs(sitk.GetArrayViewFromImage(ours)
                            - sitk.GetArrayViewFromImage(base).astype(np.float32)).max())
        print(f"read_ct_series:             {t_ours:.3f} s")
        print(f"SimpleITK/GDCM (baseline):  {t_base:.3f} s")
        print(f"ratio ours/baseline: {t_ours / t_base:.2f}×  (max |ΔHU| = {diff:.3g})")

        t_nm, _ = _best_of(lambda: read_nm_image(root / "nm.dcm"))
        print(f"read_nm_image 128³ SPECT:   {t_nm:.3f} s")
