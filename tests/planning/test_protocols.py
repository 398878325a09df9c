"""Protocols, limits and tissue parameter sets: cited defaults, edits, files and errors."""

from __future__ import annotations

import json

import pytest

from dosimetry import units
from dosimetry.errors import InputError
from planning.protocols import (
    LimitQuantity,
    LimitScope,
    Objective,
    Protocol,
    ProtocolName,
    default_protocol,
    load_protocol,
)
from planning.tissues import TISSUES, get_tissue, tissue_for_voi


def _limit(p: Protocol, tissue: str, quantity: LimitQuantity):
    return next(lim for lim in p.limits if tissue in lim.tissues and lim.quantity is quantity)


def test_trial_schedules():
    dota = default_protocol("lu177-dotatate")
    assert (dota.n_cycles, dota.standard_activity_gbq, dota.interval_weeks) == (4, 7.4, 8.0)
    assert any("NEJMoa1607427" in r for r in dota.references)
    psma = default_protocol(ProtocolName.LU177_PSMA)
    assert (psma.n_cycles, psma.standard_activity_gbq, psma.interval_weeks) == (6, 7.4, 6.0)
    assert any("NEJMoa2107322" in r for r in psma.references)


def test_cited_limits():
    dota = default_protocol("lu177-dotatate")
    kid = _limit(dota, "kidney", LimitQuantity.BED)
    assert kid.value == 40.0 and kid.scope is LimitScope.CUMULATIVE and "Bodei" in kid.source
    assert _limit(dota, "red-marrow", LimitQuantity.DOSE).value == 2.0
    sal = _limit(default_protocol("lu177-psma"), "salivary-gland", LimitQuantity.EQD2)
    assert not sal.enforced and not sal.verified
    dtc = default_protocol("i131-dtc")
    blood = _limit(dtc, "blood", LimitQuantity.DOSE)
    assert (blood.value, blood.scope) == (2.0, LimitScope.PER_CYCLE)
    lung = _limit(dtc, "whole-body", LimitQuantity.RETAINED_ACTIVITY_48H)
    # 80 mCi × 3.7e7 Bq/mCi = 2.96e9 Bq exactly (definition of the curie).
    assert lung.value * units.GBQ == pytest.approx(80 * units.MCI, rel=1e-15)
    assert not lung.enforced
    benign = default_protocol("i131-benign")
    assert benign.objective is Objective.TARGET_DOSE and benign.target_tissue == "thyroid"


def test_edits_return_new_validated_protocols():
    dota = default_protocol("lu177-dotatate")
    risk = dota.with_limit_value("kidney", "bed", 28.0)
    assert _limit(risk, "kidney", LimitQuantity.BED).value == 28.0
    assert _limit(dota, "kidney", LimitQuantity.BED).value == 40.0  # original unchanged
    added = dota.with_limit_value("liver", "dose", 30.0)
    assert _limit(added, "liver", LimitQuantity.DOSE).source == "user-supplied"
    lung = default_protocol("i131-dtc").with_enforced("whole-body", "retained-activity-48h")
    assert _limit(lung, "whole-body", LimitQuantity.RETAINED_ACTIVITY_48H).enforced
    with pytest.raises(InputError, match="-3"):
        dota.with_limit_value("kidney", "bed", -3.0)
    with pytest.raises(InputError, match="min_activity_gbq.*20"):
        dota.with_updates(min_activity_gbq=20.0)
    with pytest.raises(InputError, match="no eqd2 limit on 'kidney'"):
        dota.with_enforced("kidney", "eqd2")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_protocol_file_round_trip(tmp_path, suffix):
    p = default_protocol("lu177-psma").with_limit_value("kidney", "bed", 28.0)
    path = p.save(tmp_path / f"prot{suffix}")
    assert load_protocol(path) == p
    assert [f.name for f in tmp_path.iterdir()] == [f"prot{suffix}"]  # no temporary left


def test_protocol_file_errors_name_file_field_value(tmp_path):
    data = default_protocol("lu177-dotatate").model_dump(mode="json")
    data["limits"][0]["value"] = -5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"bad\.json.*limits\.0\.value.*-5"):
        load_protocol(path)
    with pytest.raises(InputError, match="not found"):
        load_protocol(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="'lu-177-x'"):
        default_protocol("lu-177-x")


def test_tissue_parameters_and_name_matching():
    kid = get_tissue("Kidneys")
    assert (kid.alpha_beta_gy, kid.repair_half_time_h) == (2.6, 2.8)
    assert get_tissue("tumor").alpha_beta_gy == 10.0
    assert all(t.source for t in TISSUES.values())
    assert tissue_for_voi("Kidney_Left", lesion=False)[0].name == "kidney"
    assert tissue_for_voi("parotid_gland_right", lesion=False)[0].name == "salivary-gland"
    assert tissue_for_voi("bone marrow (L2-L4)", lesion=False)[0].name == "red-marrow"
    assert tissue_for_voi("whole body", lesion=False)[0].name == "whole-body"
    assert tissue_for_voi("liver_met_3", lesion=True)[0].name == "tumour"
    t, matched = tissue_for_voi("pancreas", lesion=False)
    assert t.name == "normal-tissue" and not matched
    with pytest.raises(InputError, match="'bone'"):
        get_tissue("bone")
    with pytest.raises(InputError, match="-1"):
        kid.with_values(alpha_beta_gy=-1.0)
    assert kid.with_values(repair_half_time_h=1.0).repair_half_time_s == 3600.0
