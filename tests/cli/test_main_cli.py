"""The rptdose entry point: version, nuclide, validate, and how errors reach the user."""

import json
from datetime import datetime, timedelta

import numpy as np
import SimpleITK as sitk
import yaml

from cli.main import main
from dosimetry import __version__
from dosimetry.io.images import write_image


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rptdose {__version__}"


def test_nuclide_json_keys_and_values(capsys):
    assert main(["nuclide", "177Lu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {
        "name",
        "half_life_s",
        "electron_energy_mev_per_decay",
        "photon_energy_mev_per_decay",
        "lines",
    } <= set(data)
    assert data["name"] == "Lu-177"
    # physics.md (ICRP-107): 6.647 d; printed to 4 significant figures → 1e-4 relative.
    assert abs(data["half_life_s"] / 86400 - 6.647) / 6.647 < 1e-4
    assert abs(data["electron_energy_mev_per_decay"] - 0.14792) < 5e-6


def test_nuclide_table(capsys):
    assert main(["nuclide", "I-131"]) == 0
    out = capsys.readouterr().out
    assert "I-131" in out and "364.4" in out  # the 364.5 keV gamma line (ICRP-107: 364.490)


def test_unknown_nuclide_is_one_line_exit_1(capsys):
    assert main(["nuclide", "Xx-999"]) == 1
    captured = capsys.readouterr()
    assert "Xx-999" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1


def test_usage_error_exit_2(capsys):
    assert main(["ingest"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def _write_study(tmp_path, hours):
    inj = datetime(2024, 1, 1, 8, 0)
    img = sitk.GetImageFromArray(np.ones((8, 8, 8), np.float32))
    img.SetSpacing((4.8, 4.8, 4.8))
    tps = []
    for h in hours:
        write_image(img, tmp_path / f"s{h}.nii.gz")
        write_image(img, tmp_path / f"c{h}.nii.gz")
        tps.append(
            {
                "label": f"{h}h",
                "acquisition_datetime": (inj + timedelta(hours=h)).isoformat(),
                "spect": f"s{h}.nii.gz",
                "spect_units": "Bq/mL",
                "ct": f"c{h}.nii.gz",
            }
        )
    d = {
        "patient_id": "P1",
        "nuclide": "Lu-177",
        "radiopharmaceutical": "PSMA-617",
        "administered_activity_mbq": 7400,
        "injection_datetime": inj.isoformat(),
        "timepoints": tps,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_validate_ok_and_bad(tmp_path, capsys):
    path = _write_study(tmp_path, [24, 4])  # wrong order
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "strictly increasing" in err and "study.yaml" in err and "Traceback" not in err
    path = _write_study(tmp_path, [4, 24])
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_help_keeps_units_in_brackets(capsys):
    # Units are written "[h]", "[mm]" in option help; they must not be swallowed as markup.
    assert main(["phantom", "make", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[h]" in out and "[mm]" in out
