"""``rptdose run`` and ``rptdose demo``: the whole pipeline from a study to a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

out = Console(highlight=False, soft_wrap=True)


def _run(manifest: Path, workdir: Path, options) -> None:
    from dosimetry.study.manifest import load_study
    from planning.workflow.pipeline import ORDER, run_pipeline

    load_study(manifest)  # a bad manifest is refused before any progress is shown

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=out, transient=False) as bar:
        tasks = {s.value: bar.add_task(f"[dim]{s.value}[/dim]", total=1) for s in ORDER}

        def progress(stage: str, state: str) -> None:
            if state == "start":
                bar.update(tasks[stage], description=f"[bold]{stage}[/bold] …")
            elif state == "skip":
                bar.update(tasks[stage], description=f"{stage} (up to date, skipped)",
                           completed=1)
            else:
                bar.update(tasks[stage], description=f"{stage} done", completed=1)

        result = run_pipeline(manifest, workdir, options, progress=progress)
    out.print(f"report: {escape(str(result.report_pdf))}")
    out.print(f"        {escape(str(result.report_html))}")
    out.print(f"results: {escape(str(result.results_json))}")


def run_cmd(
    manifest: Annotated[Path, typer.Argument(help="Study manifest (.yaml/.json).")],
    workdir: Annotated[Path, typer.Option("-o", "--output", help="Work folder.")] = Path("work"),
    dose_engine: Annotated[str, typer.Option(
        help="led, dvk, mc, deep or gate (GATE 10; needs opengate and its Geant4 data).")]
    = "dvk",
    segmenter: Annotated[str, typer.Option(
        help="builtin, totalsegmentator or masks:PATH.")] = "builtin",
    registration: Annotated[str, typer.Option(help="classical or learned.")] = "classical",
    reference_timepoint: Annotated[str | None, typer.Option(
        help="Label of the reference timepoint (default: the manifest's, else the first).")]
    = None,
    protocol: Annotated[str | None, typer.Option(
        help="lu177-dotatate, lu177-psma, i131-dtc or i131-benign (default: from the "
             "radiopharmaceutical).")] = None,
    cycles_done: Annotated[int | None, typer.Option(help="Cycles delivered so far.")] = None,
    confidence: Annotated[float | None, typer.Option(
        help="Chance-constrained planning: probability the limits hold (e.g. 0.95).")] = None,
    mc_decays: Annotated[int, typer.Option(help="Decays simulated by the mc engine.")]
    = 2_000_000,
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    force: Annotated[list[str] | None, typer.Option(
        help="Redo this stage and the ones after it (repeatable).")] = None,
    truth: Annotated[Path | None, typer.Option(
        help="truth/ folder of a digital patient: adds the truth check to the report.")]
    = None,
    spect_fwhm_mm: Annotated[float | None, typer.Option(
        help="SPECT resolution FWHM [mm] for the partial-volume correction (default: the "
             "manifest's spect_fwhm_mm; none: no correction).")] = None,
    keep_identifiers: Annotated[bool, typer.Option(
        help="Put the CT's patient name, ID and study UID into the DICOM exports (default: "
             "the pseudonym only).")] = False,
    date_shift_days: Annotated[int, typer.Option(
        help="Shift every date in the exports and the report by this many days.")] = 0,
) -> None:
    """Register, segment, fit, compute dose, plan and report; resumes finished stages."""
    from dosimetry.errors import InputError
    from dosimetry.study.workdir import Stage
    from planning.workflow.pipeline import PipelineOptions

    try:
        stages = tuple(Stage(s) for s in (force or []))
    except ValueError:
        raise InputError(f"--force {force}: stages are "
                         f"{', '.join(s.value for s in Stage)}") from None
    try:
        options = PipelineOptions(
            dose_engine=dose_engine, segmenter=segmenter, registration_method=registration,
            reference_timepoint=reference_timepoint, protocol=protocol, cycles_done=cycles_done,
            confidence=confidence, mc_decays=mc_decays, seed=seed, device=device,
            truth_dir=truth, force=stages, pvc_fwhm_mm=spect_fwhm_mm,
            keep_identifiers=keep_identifiers, date_shift_days=date_shift_days)
    except ValueError as exc:  # pydantic: name the option and the value
        raise InputError(" ".join(str(exc).split())) from None
    _run(manifest, workdir, options)


def demo_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="Demo folder.")]
    = Path("rptdose-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the digital patient.")] = 1,
    dose_engine: Annotated[str, typer.Option(
        help="led, dvk, mc, deep or gate (GATE 10; needs opengate and its Geant4 data).")]
    = "dvk",
    segmenter: Annotated[str, typer.Option(
        help="builtin, masks (the digital patient's own contours, imported as a physician's "
             "label map would be) or auto: builtin when its organ weights are installed, "
             "else masks.")] = "auto",
) -> None:
    """Make a digital patient (DICOM), ingest it and run the whole pipeline on it."""
    from dosimetry.errors import InputError
    from dosimetry.segmentation.builtin import ORGAN_MODEL, WEIGHTS_DIR
    from dosimetry.study.ingest import ingest_dicom, require_complete
    from phantoms import PatientConfig, make_patient
    from planning.workflow.pipeline import PipelineOptions

    if segmenter not in ("auto", "builtin", "masks"):
        raise InputError(f"--segmenter {segmenter!r}: expected auto, builtin or masks")
    t0 = time.perf_counter()
    patient = output / "patient"
    out.print(f"making digital patient (seed {seed}) in {escape(str(patient))} …")
    made = make_patient(patient, PatientConfig(seed=seed, output_format="dicom", n_lesions=3),
                        overwrite=True)
    manifest = output / "study.yaml"
    # DICOM headers do not carry the system resolution; a physicist enters the FWHM measured
    # for the camera (here: the digital patient's acquisition) to enable the PVC.
    require_complete(ingest_dicom(patient / "dicom", manifest,
                                  spect_fwhm_mm=made.study.spect_fwhm_mm))
    out.print(f"ingested the DICOM export into {escape(str(manifest))}")
    if segmenter == "auto":
        have = (WEIGHTS_DIR / f"{ORGAN_MODEL}.json").is_file()
        segmenter = "builtin" if have else "masks"
        if not have:
            out.print("the built-in organ model is not installed (rptdose train segmentation): "
                      "segmenting with the digital patient's own contours (masks)")
    seg = ("builtin" if segmenter == "builtin"
           else f"masks:{(patient / 'truth' / 'labels.nii.gz').resolve()}")
    _run(manifest, output / "work", PipelineOptions(dose_engine=dose_engine, seed=seed,
                                                    segmenter=seg,
                                                    truth_dir=patient / "truth"))
    out.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
