"""TotalSegmentator backend: a clear error when it is absent, and the class mapping."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dosimetry.errors import DependencyError
from dosimetry.segmentation.totalseg import map_totalseg_labels, segment_totalseg
from tests.dosimetry.segmentation.conftest import make_grid


@pytest.mark.skipif(importlib.util.find_spec("totalsegmentator") is not None,
                    reason="TotalSegmentator is installed here; the missing case cannot be shown")
def test_missing_totalsegmentator_says_what_to_install():
    with pytest.raises(DependencyError, match=r"pip install TotalSegmentator.*TOTALSEG_HOME_DIR"):
        segment_totalseg(make_grid())


def test_classes_map_to_our_names_and_lobes_merge():
    ref = make_grid(size=(6, 4, 2))
    ts = {1: "spleen", 2: "kidney_right", 10: "lung_upper_lobe_left",
          11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right", 50: "vertebrae_L1",
          51: "vertebrae_L2", 90: "something_we_do_not_use"}
    arr = np.zeros((2, 4, 6), np.uint8)
    arr[0, 0, :2] = 10
    arr[0, 0, 2:4] = 11
    arr[0, 1, :] = 50
    arr[0, 2, :] = 51
    arr[1, :, :] = 90
    arr[1, 0, 0] = 1
    lm = map_totalseg_labels(arr, ts, ref)
    names = lm.table.names()
    assert set(names.values()) == {"spleen", "lung_left", "vertebrae"}
    out = lm.array()
    lung = lm.table.by_name("lung_left").label
    assert (out == lung).sum() == 4  # two lobes merged
    assert (out == lm.table.by_name("vertebrae").label).sum() == 12
    assert out[1, 1, 1] == 0  # unmapped class dropped
