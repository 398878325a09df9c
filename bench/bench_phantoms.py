"""Digital-patient generation time: a 4-timepoint Lu-177 DOTATATE study, per stage.

Target (issue): a 4-timepoint study in under 60 s on 2 cores at the default grid (CT 2.5 mm
in-plane, 3 mm slices; SPECT 4.7952 mm, 128²) written as DICOM. ``quick`` uses the coarse
test grid instead. Prints figures, never passes or fails on time.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from phantoms import GridSpec, IECConfig, PatientConfig, make_iec, make_patient


def _stages(timings: dict[str, float]) -> dict[str, float]:
    """Merge per-timepoint entries ('4h CT' …) into one figure per stage."""
    out: dict[str, float] = defaultdict(float)
    for key, v in timings.items():
        stage = key.split(" ", 1)[1] if key[0].isdigit() else key
        out[stage] += v
    return dict(out)


def run(quick: bool = False) -> None:
    kw = {}
    if quick:
        kw = {"grid": GridSpec(inplane_mm=6.0, slice_mm=6.0), "spect_spacing_mm": 9.5904,
              "spect_matrix": 64}
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPUs available: {n_cpu}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("dicom", "nifti"):
            cfg = PatientConfig(seed=1, output_format=fmt, n_lesions=3, **kw)
            t0 = time.perf_counter()
            res = make_patient(Path(tmp) / f"study_{fmt}", cfg)
            wall = time.perf_counter() - t0
            g = res.truth["reference"]["grid"]["size"]
            print(f"\n4-timepoint lu177-dotatate, {fmt}, CT grid {g[0]}×{g[1]}×{g[2]}, "
                  f"{len(res.files)} files: {wall:.1f} s")
            for stage, v in _stages(res.timings_s).items():
                if stage != "total":
                    print(f"  {stage:<12} {v:6.2f} s")
        t0 = time.perf_counter()
        iec = make_iec(Path(tmp) / "iec", IECConfig(ct_spacing_mm=4.0 if quick else 2.0))
        print(f"\nIEC phantom (CT {'4' if quick else '2'} mm): {time.perf_counter() - t0:.1f} s"
              f" ({', '.join(f'{k} {v:.2f} s' for k, v in iec.timings_s.items())})")


if __name__ == "__main__":  # pragma: no cover
    run()
