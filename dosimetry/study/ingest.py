"""Ingest: from a folder exported by the scanner to a validated study manifest.

The folder tree is scanned (headers only), series are grouped by patient, study and series,
each reconstructed SPECT (NM) series becomes a timepoint paired with its CT (same frame of
reference, closest acquisition time) and RTSTRUCT; injection time and activity come from the
RadiopharmaceuticalInformationSequence, units from the NM header. Whatever is missing is listed
with the option that supplies it, and nothing is written until the manifest validates.

Raw tomographic projections (NM TOMO, not reconstructed) are reported and left out, unless
``reconstruct_projections`` is set: then the bed positions of each acquisition are
reconstructed (:func:`dosimetry.reconstruction.reconstruct_to_file`: OSEM with attenuation from
the CT of the same frame of reference, TEW scatter, collimator response) into
``recon/spect_*.nii.gz`` beside the manifest, in counts per view, and those images become the
timepoints' SPECT, with the time per view as their frame duration (so that
``counts / (frame duration × calibration × voxel volume)`` gives Bq/mL). An image whose sidecar
JSON shows the same series and settings is reused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from dosimetry.errors import InputError, MissingDataError, NuclideError
from dosimetry.study.manifest import (
    ImageFormat,
    ImageRef,
    SpectUnits,
    Study,
    Timepoint,
    check_study_files,
)

if TYPE_CHECKING:
    from dosimetry.reconstruction.recon import ReconSettings

#: NM series acquired within this time of each other are one imaging session (e.g. an AC and a
#: NAC reconstruction of the same acquisition, or two bed positions); sessions of a therapy
#: study are hours to days apart.
SAME_SESSION = timedelta(minutes=45)

#: A CT more than this far in time from the SPECT is not taken as its attenuation/anatomy CT
#: unless they share a frame of reference.
MAX_CT_GAP = timedelta(hours=6)

# Element names as DICOM CID 4020 code meanings spell them ("^177^Lutetium", "99m Technetium").
_ELEMENTS = {
    "actinium": "Ac",
    "astatine": "At",
    "bismuth": "Bi",
    "carbon": "C",
    "copper": "Cu",
    "erbium": "Er",
    "fluorine": "F",
    "gallium": "Ga",
    "holmium": "Ho",
    "indium": "In",
    "iodine": "I",
    "lead": "Pb",
    "lutetium": "Lu",
    "radium": "Ra",
    "rhenium": "Re",
    "rubidium": "Rb",
    "samarium": "Sm",
    "scandium": "Sc",
    "strontium": "Sr",
    "technetium": "Tc",
    "terbium": "Tb",
    "thallium": "Tl",
    "thorium": "Th",
    "xenon": "Xe",
    "yttrium": "Y",
    "zirconium": "Zr",
    "chromium": "Cr",
    "cobalt": "Co",
    "nitrogen": "N",
    "oxygen": "O",
}


@dataclass(frozen=True)
class TimepointCandidate:
    """What ingest found for one imaging session (before validation)."""

    label: str
    spect_series_uid: str
    spect_description: str
    acquisition_datetime: datetime | None
    ct_series_uid: str | None
    rtstruct_series_uid: str | None
    units: str
    ignored_series: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    """Outcome of :func:`ingest_dicom`: the study (when complete), what was found and missing."""

    study: Study | None
    rows: tuple[tuple[str, ...], ...]
    timepoints: tuple[TimepointCandidate, ...]
    missing: tuple[str, ...]
    warnings: tuple[str, ...]
    skipped_files: tuple[tuple[Path, str], ...] = field(default=())

    @property
    def success(self) -> bool:
        """True when a valid study was built."""
        return self.study is not None


def parse_dicom_nuclide(text: str | None) -> str | None:
    """Canonical nuclide name from DICOM text (``'^177^Lutetium'``, ``'99m Technetium'``,
    ``'Lu-177'``, ``'I131'``), or None when it cannot be recognised."""
    if not text:
        return None
    from dosimetry.nuclides import get_nuclide

    t = text.strip()
    m = re.fullmatch(r"\^?\s*(\d{1,3})\s*(m?)\s*\^?\s*[- ]?\s*([A-Za-z]+)", t)
    if m is None:
        m2 = re.fullmatch(r"([A-Za-z]+)\s*[- ]?\s*(\d{1,3})\s*(m?)", t)
        if m2 is not None:
            m = m2
            name, mass, meta = m2.group(1), m2.group(2), m2.group(3)
        else:
            name = mass = meta = None
    else:
        mass, meta, name = m.group(1), m.group(2), m.group(3)
    if name is None or mass is None:
        candidates = [t]
    else:
        symbol = _ELEMENTS.get(name.lower(), name)
        candidates = [f"{symbol.capitalize()}-{mass}{meta.lower()}", t]
    for c in candidates:
        try:
            return get_nuclide(c).name
        except NuclideError:
            continue
    return None


def pseudonymise(patient_id: str, key: str | None = None) -> str:
    """Stable pseudonym for a DICOM PatientID.

    With a key (``RPTDOSE_PSEUDONYM_KEY``) it is an HMAC-SHA256, which cannot be reversed by
    trying candidate IDs without the key; without one it is a plain SHA-256 prefix, which keeps
    the ID out of files and logs but can be matched by someone who guesses the ID.
    """
    key = key if key is not None else os.environ.get("RPTDOSE_PSEUDONYM_KEY")
    data = patient_id.encode("utf-8")
    digest = (
        hmac.new(key.encode("utf-8"), data, hashlib.sha256).hexdigest()
        if key
        else hashlib.sha256(data).hexdigest()
    )
    return f"P{digest[:10].upper()}"


def _is_bq_per_ml(info) -> bool:
    if (info.units or "").upper() == "BQML":
        return True
    return any(
        "bq/ml" in (u or "").lower().replace(" ", "") for u, _s, _i in info.real_world_value_mapping
    )


def _spect_preference(info) -> tuple:
    """Sort key: quantitative (Bq/mL) first, then attenuation-corrected, then most recent."""
    text = " ".join([*info.image_type, info.series_description]).upper()
    ac = ("ATTN" in text or " AC" in f" {text}" or "ATTENUATION" in text) and "NAC" not in text
    return (not _is_bq_per_ml(info), not ac, info.series_uid)


def _session_label(acq: datetime | None, injection: datetime | None, index: int) -> str:
    if acq is not None and injection is not None and acq > injection:
        return f"{(acq - injection).total_seconds() / 3600.0:.0f}h"
    return f"tp{index + 1}"


def ingest_dicom(
    root: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str],
    *,
    injection_datetime: datetime | None = None,
    injected_activity_mbq: float | None = None,
    calibration_cps_per_mbq: float | None = None,
    frame_duration_s: float | None = None,
    nuclide: str | None = None,
    radiopharmaceutical: str | None = None,
    patient_id: str | None = None,
    spect_fwhm_mm: float | None = None,
    allow_mixed_patients: bool = False,
    write: bool = True,
    reconstruct_projections: bool = False,
    recon_settings: ReconSettings | None = None,
) -> IngestResult:
    """Scan a DICOM export and build (and, when complete, write) the study manifest.

    Parameters
    ----------
    root : path
        Folder tree exported from the scanner (any nesting; non-DICOM files are skipped).
    manifest_path : path
        Where the manifest goes (``.yaml`` or ``.json``); image paths in it are relative to its
        folder.
    injection_datetime, injected_activity_mbq, calibration_cps_per_mbq, frame_duration_s,
    nuclide, radiopharmaceutical : optional
        Values that override, or stand in for, what the files carry. Activity in MBq,
        sensitivity in cps/MBq, duration in s.
    patient_id : str, optional
        Pseudonym to use; default derived from the DICOM PatientID by :func:`pseudonymise`.
    spect_fwhm_mm : float, optional
        Reconstructed SPECT resolution [mm] to record (not in DICOM headers); enables the
        pipeline's partial-volume correction.
    allow_mixed_patients : bool
        Accept a folder holding several patients (the series of all are used).
    write : bool
        Write the manifest when it is complete (atomically).
    reconstruct_projections : bool
        Reconstruct raw tomographic projections with the CT of their frame of reference into
        ``recon/`` beside the manifest and use them as timepoints (see the module notes); the
        images are written even when the manifest is incomplete. Without it raw projections are
        reported and not used.
    recon_settings : ReconSettings, optional
        OSEM settings for ``reconstruct_projections`` (default 4 iterations, TEW, PSF, CPU).

    Returns
    -------
    IngestResult
        ``study`` is None and ``missing`` lists what to supply when the export is incomplete.

    Raises
    ------
    InputError
        No DICOM found, several patients without ``allow_mixed_patients``, no reconstructed SPECT.
    """
    from dosimetry.io.dicom import scan_dicom_folder

    root = Path(root)
    manifest_path = Path(manifest_path)
    if not root.exists():
        raise InputError(f"{root}: folder not found")
    scan = scan_dicom_folder(root)
    warn: list[str] = [f"skipped {p}: {why}" for p, why in scan.skipped]
    if not scan.series:
        raise InputError(
            f"{root}: no readable DICOM series found"
            + (f" ({len(scan.skipped)} files skipped)" if scan.skipped else "")
        )
    patients = scan.patients()
    if len(patients) > 1 and not allow_mixed_patients:
        raise InputError(
            f"{root}: holds {len(patients)} patients "
            f"({', '.join(pseudonymise(p) for p in patients)}"
            " as pseudonyms); export one patient per folder or pass --allow-mixed-patients"
        )

    rows = tuple(
        (
            s.modality,
            s.series_description or "-",
            _fmt_dt(s.acquisition_datetime),
            str(s.n_images),
            s.frame_of_reference_uid[-12:] if s.frame_of_reference_uid else "-",
            _series_note(s),
        )
        for s in sorted(
            scan.series, key=lambda s: (s.acquisition_datetime or datetime.min, s.modality)
        )
    )

    nm_all = [s for s in scan.series if s.modality in ("NM", "PT")]
    projections = [s for s in nm_all if s.is_reconstructed is False]
    spect = [s for s in nm_all if s.is_reconstructed is not False]
    recon_missing: list[str] = []
    #: series UID of each reconstruction made here → its time per view [s]
    recon_tpv: dict[str, float | None] = {}
    if projections and reconstruct_projections:
        made, notes, recon_missing = _reconstruct_projections(
            projections, [s for s in scan.series if s.modality == "CT"], manifest_path,
            recon_settings, nuclide)
        warn.extend(notes)
        spect.extend(info for info, _ in made)
        recon_tpv.update({info.series_uid: tpv for info, tpv in made})
    else:
        for s in projections:
            warn.append(
                f"NM series {s.series_description!r} holds raw projections, not a "
                "reconstructed SPECT; it is not used: reconstruct it with "
                "--reconstruct-projections (reconstruct_projections=True) or 'rptdose recon'"
            )
    if not spect:
        raise InputError(
            f"{root}: no reconstructed SPECT (NM) series found"
            + (f"; found raw projections ({len(projections)} series): reconstruct them with "
               "--reconstruct-projections (with the CT of their frame of reference) or "
               "'rptdose recon'" if projections and not reconstruct_projections else "")
            + ("; the raw projections could not be reconstructed: "
               + "; ".join(recon_missing) if recon_missing else "")
        )

    # --- group SPECT series into imaging sessions ---------------------------------------------
    spect.sort(key=lambda s: (s.acquisition_datetime or datetime.min, s.series_uid))
    sessions: list[list] = []
    for s in spect:
        if (
            sessions
            and s.acquisition_datetime is not None
            and sessions[-1][0].acquisition_datetime is not None
            and s.acquisition_datetime - sessions[-1][0].acquisition_datetime <= SAME_SESSION
        ):
            sessions[-1].append(s)
        else:
            sessions.append([s])

    missing: list[str] = list(recon_missing)

    # --- administration: injection time, activity, nuclide -------------------------------------
    inj = injection_datetime
    if inj is None:
        found = sorted({s.injection_datetime for s in spect if s.injection_datetime is not None})
        if len(found) > 1 and found[-1] - found[0] > timedelta(minutes=1):
            raise InputError(
                f"{root}: SPECT series disagree on the injection time "
                f"({', '.join(_fmt_dt(d) for d in found)}); give --injection-time"
            )
        inj = found[0] if found else None
        assumed = [
            s
            for s in spect
            if s.injection_datetime == inj
            and s.injection_datetime_source
            and "assumed" in s.injection_datetime_source
        ]
        if inj is not None and assumed:
            warn.append(
                f"injection date-time {_fmt_dt(inj)}: {assumed[0].injection_datetime_source}"
                "; check it, or give --injection-time"
            )
    if inj is None:
        missing.append(
            "injection time: not in RadiopharmaceuticalInformationSequence "
            "(RadiopharmaceuticalStartDateTime); give --injection-time "
            "YYYY-MM-DDTHH:MM"
        )

    act = injected_activity_mbq
    if act is None:
        values = sorted({s.injected_activity_bq for s in spect if s.injected_activity_bq})
        if values:
            act = values[0] / 1e6
            for s in spect:
                if s.injected_activity_note:
                    warn.append(f"{s.series_description!r}: {s.injected_activity_note}")
                    break
            if len(values) > 1 and values[-1] / values[0] > 1.01:
                warn.append(
                    f"SPECT series give different administered activities "
                    f"({', '.join(f'{v / 1e6:.1f}' for v in values)} MBq); using "
                    f"{act:.1f} MBq"
                )
    if act is None:
        missing.append(
            "administered activity: RadionuclideTotalDose absent; give --injected-activity-mbq"
        )

    nuc = nuclide
    if nuc is None:
        for s in spect:
            nuc = parse_dicom_nuclide(s.nuclide) or parse_dicom_nuclide(s.radiopharmaceutical)
            if nuc:
                break
    else:
        from dosimetry.nuclides import get_nuclide

        nuc = get_nuclide(nuc).name
    if nuc is None:
        missing.append(
            "nuclide: RadionuclideCodeSequence absent or not recognised; give "
            "--nuclide (e.g. Lu-177)"
        )

    pharm = radiopharmaceutical or next(
        (s.radiopharmaceutical for s in spect if s.radiopharmaceutical), None
    )
    if pharm is None:
        pharm = "unknown"
        warn.append(
            "radiopharmaceutical not in the header; recorded as 'unknown' "
            "(give --radiopharmaceutical)"
        )

    # --- one timepoint per session ---------------------------------------------------------------
    cts = [s for s in scan.series if s.modality == "CT"]
    rts = [s for s in scan.series if s.modality == "RTSTRUCT"]
    base = manifest_path.resolve().parent
    candidates: list[TimepointCandidate] = []
    timepoints: list[Timepoint] = []
    for i, session in enumerate(sessions):
        chosen = min(session, key=lambda s: (s.series_uid not in recon_tpv,
                                             _spect_preference(s)))
        ignored = tuple(s.series_description or s.series_uid for s in session if s is not chosen)
        if ignored:
            warn.append(
                f"session {i + 1}: using SPECT {chosen.series_description!r}; ignoring "
                f"{', '.join(repr(x) for x in ignored)}"
            )
        label = _session_label(chosen.acquisition_datetime, inj, i)
        ct = _pair(chosen, cts)
        rt = _pair(chosen, rts, require_same_for=True)
        if ct is None:
            missing.append(
                f"timepoint {label}: no CT with the SPECT's frame of reference or "
                f"within {MAX_CT_GAP.total_seconds() / 3600:.0f} h of it"
            )
        elif ct.frame_of_reference_uid != chosen.frame_of_reference_uid:
            warn.append(
                f"timepoint {label}: CT {ct.series_description!r} paired by time; its "
                "frame of reference differs from the SPECT's"
            )
        is_bq = _is_bq_per_ml(chosen)
        cal = None if is_bq else calibration_cps_per_mbq
        dur = None if is_bq else (frame_duration_s or chosen.frame_duration_s)
        if chosen.series_uid in recon_tpv:  # our reconstruction: counts per view
            dur = recon_tpv[chosen.series_uid]
            if frame_duration_s is not None and dur is not None and \
                    abs(frame_duration_s - dur) > 1e-6:
                warn.append(f"timepoint {label}: --frame-duration-s {frame_duration_s:g} s not "
                            f"used; the reconstruction is in counts per view of {dur:g} s")
        if not is_bq:
            if cal is None:
                missing.append(
                    f"timepoint {label}: SPECT is in counts "
                    f"(Units {chosen.units or 'absent'}) and has no calibration; give "
                    "--calibration-cps-per-mbq"
                )
            if dur is None:
                missing.append(
                    f"timepoint {label}: SPECT frame duration absent; give --frame-duration-s"
                )
        if chosen.acquisition_datetime is None:
            missing.append(f"timepoint {label}: SPECT has no acquisition date/time")
        candidates.append(
            TimepointCandidate(
                label=label,
                spect_series_uid=chosen.series_uid,
                spect_description=chosen.series_description,
                acquisition_datetime=chosen.acquisition_datetime,
                ct_series_uid=ct.series_uid if ct else None,
                rtstruct_series_uid=rt.series_uid if rt else None,
                units="Bq/mL" if is_bq else "counts",
                ignored_series=ignored,
            )
        )
        if missing:
            continue
        timepoints.append(
            Timepoint(
                label=label,
                acquisition_datetime=chosen.acquisition_datetime,
                spect=_ref(chosen, base),
                spect_units=SpectUnits.BQ_PER_ML if is_bq else SpectUnits.COUNTS,
                calibration_cps_per_mbq=cal,
                frame_duration_s=dur,
                ct=_ref(ct, base) if ct else None,
                rtstruct=_ref(rt, base) if rt else None,
            )
        )

    if missing:
        return IngestResult(
            None, rows, tuple(candidates), tuple(missing), tuple(warn), scan.skipped
        )

    source_pid = next((s.patient_id for s in spect if s.patient_id), "")
    weight = next((s.patient_weight_kg for s in spect if s.patient_weight_kg), None)
    study = Study.from_dict(
        {
            "patient_id": patient_id or pseudonymise(source_pid),
            "nuclide": nuc,
            "radiopharmaceutical": pharm,
            "administered_activity_mbq": act,
            "injection_datetime": inj,
            "timepoints": [tp.model_dump() for tp in timepoints],
            "patient_weight_kg": weight,
            "spect_fwhm_mm": spect_fwhm_mm,
            "source": {
                "ingested_from": str(_portable_path(root, base)),
                "tool": "rptdose ingest",
            },
        },
        source=f"manifest built from {root}",
    )
    warn.extend(check_study_files(study, base))
    if write:
        study.save(manifest_path)
    return IngestResult(study, rows, tuple(candidates), (), tuple(warn), scan.skipped)


def require_complete(result: IngestResult) -> Study:
    """The study, or :class:`MissingDataError` listing every missing item."""
    if result.study is None:
        raise MissingDataError(
            "the export is incomplete:\n  - " + "\n  - ".join(result.missing),
            missing=list(result.missing),
        )
    return result.study


def _reconstruct_projections(projections, cts, manifest_path: Path,
                             settings: ReconSettings | None, nuclide: str | None):
    """Reconstruct each acquisition of raw tomographic projections (its bed series: same
    patient and frame of reference, acquired within :data:`SAME_SESSION`) with the CT of its
    frame of reference into ``recon/`` beside the manifest.

    Returns ((SeriesInfo of the image, time per view [s]) per acquisition, notes, missing).
    """
    from dosimetry.io.dicom_write import uid_from_seed
    from dosimetry.reconstruction import reconstruct_to_file

    notes: list[str] = []
    missing: list[str] = []
    tomo = []
    for s in projections:
        kind = s.image_type[2].upper() if len(s.image_type) >= 3 else ""
        if kind == "TOMO":
            tomo.append(s)
        else:
            notes.append(f"NM series {s.series_description!r} ({kind or 'raw'}) is not a "
                         "tomographic acquisition and is not used")
    groups: list[list] = []
    for s in sorted(tomo, key=lambda s: (s.acquisition_datetime or datetime.min, s.series_uid)):
        for g in groups:
            ref = g[0]
            close = (s.acquisition_datetime is None or ref.acquisition_datetime is None
                     or abs(s.acquisition_datetime - ref.acquisition_datetime) <= SAME_SESSION)
            if (ref.patient_id == s.patient_id and close
                    and ref.frame_of_reference_uid == s.frame_of_reference_uid):
                g.append(s)
                break
        else:
            groups.append([s])
    made = []
    out_dir = manifest_path.resolve().parent / "recon"
    for group in groups:
        desc = group[0].series_description or "projections"
        ct = _pair(group[0], cts, require_same_for=True)
        if ct is None:
            missing.append(f"raw projections {desc!r} ({len(group)} bed(s)): no CT with their "
                           "frame of reference to reconstruct them with; export the SPECT/CT's "
                           "CT, or reconstruct them with 'rptdose recon --no-attenuation'")
            continue
        uids = sorted(s.series_uid for s in group)
        when = group[0].acquisition_datetime
        stamp = when.strftime("%Y%m%d-%H%M") if when else f"for{uids[0][-6:]}"
        target = out_dir / f"spect_{stamp}_{uid_from_seed('rptdose-recon', *uids)[-8:]}.nii.gz"
        fr = reconstruct_to_file(group, ct, target, settings, source_key={
            "projections": uids, "ct": ct.series_uid}, nuclide=nuclide)
        what = "reused" if fr.reused else "reconstructed"
        notes.append(f"raw projections {desc!r} ({len(group)} bed(s)) {what} with CT "
                     f"{ct.series_description!r} into {target.name} (counts per view of "
                     f"{fr.time_per_view_s:g} s)")
        info = replace(group[0], series_uid=uid_from_seed("rptdose-recon", *uids),
                       series_description=f"{desc} [rptdose recon]", files=(target,),
                       is_reconstructed=True, units="CNTS", n_images=1,
                       image_type=("DERIVED", "SECONDARY", "RECON TOMO", "EMISSION"),
                       frame_duration_s=fr.time_per_view_s, real_world_value_mapping=())
        made.append((info, fr.time_per_view_s))
    return made, notes, missing


def _pair(spect, others, require_same_for: bool = False):
    """The series among ``others`` that belongs with ``spect``: same frame of reference first,
    then closest acquisition time (within :data:`MAX_CT_GAP`) in the same patient."""
    same_patient = [o for o in others if o.patient_id == spect.patient_id]
    same_for = [
        o
        for o in same_patient
        if spect.frame_of_reference_uid and o.frame_of_reference_uid == spect.frame_of_reference_uid
    ]
    pool = same_for
    if not pool and not require_same_for:
        pool = [
            o
            for o in same_patient
            if o.acquisition_datetime
            and spect.acquisition_datetime
            and abs(o.acquisition_datetime - spect.acquisition_datetime) <= MAX_CT_GAP
        ]
    if not pool:
        return None

    def gap(o):
        if o.acquisition_datetime is None or spect.acquisition_datetime is None:
            return timedelta.max
        return abs(o.acquisition_datetime - spect.acquisition_datetime)

    return min(pool, key=lambda o: (gap(o), o.series_uid))


def _ref(info, base: Path) -> ImageRef:
    files = [Path(f) for f in info.files]
    if len(files) == 1 and files[0].name.lower().endswith((".nii.gz", ".nii")):
        return ImageRef(path=_portable_path(files[0], base), format=ImageFormat.NIFTI)
    if len(files) == 1:
        target = files[0]
        uid = None
    else:
        target = Path(os.path.commonpath([str(f.parent.resolve()) for f in files]))
        uid = info.series_uid
    return ImageRef(path=_portable_path(target, base), format=ImageFormat.DICOM, series_uid=uid)


def _portable_path(target: Path, base: Path) -> Path:
    """``target`` relative to ``base`` when it lies inside ``base`` or beside it (one ``..``), so
    that a study folder moves as a whole; otherwise absolute."""
    target = target.resolve()
    try:
        rel = Path(os.path.relpath(target, base))
    except ValueError:  # different drive on Windows
        return target
    return target if rel.parts[:2] == ("..", "..") else rel


def _fmt_dt(d: datetime | None) -> str:
    return d.strftime("%Y-%m-%d %H:%M") if d else "-"


def _series_note(s) -> str:
    if s.modality in ("NM", "PT"):
        kind = "projections" if s.is_reconstructed is False else "recon"
        unit = "Bq/mL" if _is_bq_per_ml(s) else f"counts ({s.units or 'no Units'})"
        return f"{kind}, {unit}"
    return ""
