"""Work folder: manifest copy with absolute paths, stage markers and fingerprints."""

from pathlib import Path

import pytest

from dosimetry.errors import InputError
from dosimetry.study.manifest import Study
from dosimetry.study.workdir import Stage, WorkDir, fingerprint
from tests.dosimetry.study.test_manifest import _study_dict


def test_create_open_and_markers(tmp_path):
    study = Study.from_dict(_study_dict(tmp_path))
    wd = WorkDir.create(tmp_path / "work", study, tmp_path)
    again = WorkDir.open(tmp_path / "work").study()
    assert all(Path(tp.spect.path).is_absolute() for tp in again.timepoints)
    assert again.timepoints[0].spect.path == tmp_path / "spect_4h.nii.gz"
    fp = fingerprint("registration", {"reference": "4h"})
    assert not wd.is_done(Stage.REGISTRATION, fp)
    wd.mark_done(Stage.REGISTRATION, fp, seconds=1.5)
    assert wd.is_done("registration", fp)
    assert not wd.is_done(Stage.REGISTRATION, fingerprint("registration", {"reference": "24h"}))
    wd.invalidate(Stage.REGISTRATION)
    assert not wd.is_done(Stage.REGISTRATION, fp)


def test_open_refuses_a_folder_without_manifest(tmp_path):
    with pytest.raises(InputError, match="not a work folder"):
        WorkDir.open(tmp_path)
