"""Label maps with name tables (JSON, CSV), and the import dispatcher."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from dosimetry.errors import InputError
from dosimetry.io.images import write_image
from dosimetry.segmentation.labelmap import (
    LabelEntry,
    LabelMap,
    LabelTable,
    label_image,
    parse_label_table,
    read_label_table,
)
from dosimetry.segmentation.masks import find_name_table, import_masks
from dosimetry.segmentation.names import StructureKind, standard_name
from dosimetry.segmentation.rtstruct import write_rtstruct
from dosimetry.segmentation.seg import write_seg
from tests.dosimetry.segmentation.conftest import circle, make_grid


def _label_file(tmp_path, name="masks.nii.gz"):
    ref = make_grid(size=(20, 16, 10), spacing=(2.0, 2.0, 3.0), origin=(0, 0, 0))
    a = np.zeros((10, 16, 20), np.uint16)
    a[2:5, 2:6, 2:8] = 3
    a[6:8, 8:12, 10:15] = 7
    a[1, 1, 1] = 9  # a label without a name
    img = sitk.GetImageFromArray(a)
    img.CopyInformation(ref)
    write_image(img, tmp_path / name)
    return ref, a


@pytest.mark.parametrize("form", ["list", "mapping", "nested", "csv"])
def test_name_table_forms(tmp_path, form):
    if form == "csv":
        p = tmp_path / "labels.csv"
        p.write_text("label,name,kind\n0,background,\n3,Liver,organ\n7,Lesion A,tumor\n")
    else:
        data = {"list": [{"label": 3, "name": "liver", "kind": "organ"},
                         {"label": 7, "name": "lesion_a", "kind": "lesion"}],
                "mapping": {"3": "liver", "7": "lesion a"},
                "nested": {"3": {"name": "liver"}, "7": {"name": "lesion_a", "kind": "GTV"}}}
        p = tmp_path / "labels.json"
        p.write_text(json.dumps(data[form]))
    t = read_label_table(p)
    assert t.names() == {3: "liver", 7: "lesion_a"}
    if form != "mapping":
        assert t.get(7).kind is StructureKind.LESION


def test_bad_tables_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="label 'x' is not an integer"):
        parse_label_table({"x": "liver"})
    with pytest.raises(InputError, match="repeats label"):
        parse_label_table([{"label": 1, "name": "a"}, {"label": 1, "name": "b"}])
    p = tmp_path / "t.csv"
    p.write_text("id,organ\n1,liver\n")
    with pytest.raises(InputError, match="'label' and 'name'"):
        read_label_table(p)


def test_nifti_import_with_table_beside_it(tmp_path):
    ref, a = _label_file(tmp_path)
    (tmp_path / "masks.json").write_text(json.dumps({"3": "liver", "7": "spleen"}))
    assert find_name_table(tmp_path / "masks.nii.gz") == tmp_path / "masks.json"
    lm = import_masks(tmp_path / "masks.nii.gz", ref)
    arr = lm.array()
    assert lm.table.names() == {3: "liver", 7: "spleen"}
    assert (arr == 3).sum() == (a == 3).sum() and arr[1, 1, 1] == 0  # unnamed label dropped
    assert any("label(s) [9] have no name" in w for w in lm.warnings)


def test_nifti_import_resamples_onto_the_reference(tmp_path):
    _, a = _label_file(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps([{"label": 3, "name": "liver"},
                                                      {"label": 7, "name": "spleen"}]))
    fine = make_grid(size=(40, 32, 30), spacing=(1.0, 1.0, 1.0), origin=(-0.5, -0.5, -1.0))
    lm = import_masks(tmp_path / "masks.nii.gz", fine)
    assert lm.image.GetSize() == fine.GetSize()
    vol = (lm.array() == 3).sum() * 1.0
    assert vol == pytest.approx((a == 3).sum() * 12.0)
    assert any("nearest neighbour" in w for w in lm.warnings)


def test_nifti_without_table_is_refused(tmp_path):
    ref, _ = _label_file(tmp_path)
    with pytest.raises(InputError, match=r"no name table.*labels\.json"):
        import_masks(tmp_path / "masks.nii.gz", ref)


def test_dispatch_to_rtstruct_and_seg(tmp_path):
    ref = make_grid()
    rs = write_rtstruct(tmp_path / "rs" / "rs.dcm", [("Kidney_L", [circle((0.3, 0.2), 6, 0.0)])],
                        frame_of_reference_uid="1.2.3")
    lm = import_masks(rs.parent, ref)  # a folder holding the RTSTRUCT
    assert lm.table.names() == {1: "kidney_left"}
    a = np.zeros(tuple(reversed(ref.GetSize())), np.uint16)
    a[3:6, 10:20, 10:20] = 1
    seg = write_seg(LabelMap(label_image(a, ref), LabelTable((LabelEntry(1, "spleen"),))),
                    tmp_path / "seg.dcm")
    assert np.array_equal(import_masks(seg, ref).array(), a)
    (tmp_path / "note.txt").write_text("hello")
    with pytest.raises(InputError, match="not a label image"):
        import_masks(tmp_path / "note.txt", ref)
    with pytest.raises(InputError, match="not found"):
        import_masks(tmp_path / "missing.nii.gz", ref)


@pytest.mark.parametrize(("raw", "ours"), [
    ("Kidney_R", "kidney_right"), ("Lt Kidney", "kidney_left"), ("Bladder", "urinary_bladder"),
    ("lung_upper_lobe_left", "lung_left"), ("vertebrae_L3", "vertebrae"),
    ("Spinal Cord", "spinal_cord"), ("Proximal bronchial tree", "proximal_bronchial_tree")])
def test_standard_names(raw, ours):
    assert standard_name(raw) == ours
