"""Reading TAC CSV files."""

import numpy as np
import pytest

from dosimetry.errors import InputError
from dosimetry.kinetics import read_tac_csv


def _write(tmp_path, text, name="tac.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_read_groups_by_voi_and_converts_units(tmp_path):
    p = _write(tmp_path, "voi,time_h,activity_mbq,sigma_mbq\n"
                         "kidney,4,10,0.5\nkidney,24,8,0.4\nliver,4,30,1\nliver,24,25,1\n")
    tacs = read_tac_csv(p)
    assert list(tacs) == ["kidney", "liver"]
    k = tacs["kidney"]
    np.testing.assert_allclose(k.times_s, [4 * 3600.0, 24 * 3600.0])
    np.testing.assert_allclose(k.activity_bq, [10e6, 8e6])
    np.testing.assert_allclose(k.sigma_bq, [0.5e6, 0.4e6])


def test_read_without_voi_or_sigma(tmp_path):
    p = _write(tmp_path, "Time_h, Activity_MBq\n4,10\n24,8\n", name="patient7.csv")
    tacs = read_tac_csv(p)
    assert list(tacs) == ["patient7"] and tacs["patient7"].sigma_bq is None


@pytest.mark.parametrize(("text", "match"), [
    ("time_h,activity\n1,2\n", "missing column 'activity_mbq'"),
    ("time_h,activity_mbq,dose\n1,2,3\n", r"unknown column\(s\) \['dose'\]"),
    ("time_h,activity_mbq\n1,abc\n", r"row 2: activity_mbq 'abc' is not a number"),
    ("time_h,activity_mbq\n1,2,3\n", "row 2: 3 fields, header has 2"),
    ("time_h,activity_mbq\n", "header only"),
    ("voi,time_h,activity_mbq\nk,4,1\nk,4,2\n", r"VOI 'k': duplicate time 4 h"),
    ("voi,time_h,activity_mbq\nk,4,1\nk,24,-2\n", r"VOI 'k': activity at 24 h is negative"),
    ("voi,time_h,activity_mbq\nk,-4,1\nk,24,2\n", r"VOI 'k': time -4 h is before injection"),
    ("voi,time_h,activity_mbq\nk,4,nan\nk,24,2\n", r"VOI 'k': activity at 4 h is nan"),
    ("voi,time_h,activity_mbq\nk,4,1\n", r"VOI 'k': needs at least 2 time points, got 1"),
])
def test_bad_files_name_the_problem(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        read_tac_csv(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_tac_csv(tmp_path / "nope.csv")
