"""The Slicer logic refuses volumes with NaN or infinite voxels, as the command line does, and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from MedSAM2Lib.inference.preprocessing import NonFiniteError
from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras
from slicer_support import lesion_volume, set_segment
from test_slicer_logic import app, propagate_box, selected_segment  # noqa: F401 (app is a fixture)


def test_nan_voxels_are_refused_and_the_segment_is_unchanged(app):  # noqa: F811
    intensities = lesion_volume().astype(np.float32)
    intensities[0, 0, :7] = np.nan
    volume_node = add_volume(app.scene, intensities, oblique_ijk_to_ras(), "with NaN")
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    before = np.zeros(intensities.shape, np.uint8)
    before[2:4, 2:8, 2:9] = 1
    set_segment(segmentation, app.editor_node.GetSelectedSegmentID(), before, volume_node)
    with pytest.raises(NonFiniteError, match=r"^The source volume 'with NaN' has 7 NaN voxels \(of [\d,]+\), which no "
                                             r"window can map to an intensity; replace them first .* or choose another volume\.$"):
        propagate_box(app, volume_node)
    np.testing.assert_array_equal(selected_segment(app, volume_node), before)
    assert not app.editor_logic.CanUndo()
