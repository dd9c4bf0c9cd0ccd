"""`mlioc check`'s warning: an input's valid range that rejects most of the model's own training data."""

from __future__ import annotations

import numpy as np
import pytest

from ioc.core.config import InputConfig
from ioc.core.inputs import range_warnings, training_share

UNIFORM = {"min": 0.0, "max": 10.0, "quantiles": list(np.linspace(0.0, 10.0, 101))}


@pytest.mark.parametrize(("lo", "hi", "share"), [(0, 10, 1.0), (-5, 50, 1.0), (0, 4, 0.4), (2.5, 7.5, 0.5),
                                                 (20, 30, 0.0), (-3, -1, 0.0)])
def test_training_share_from_the_reference_quantiles(lo, hi, share):
    assert training_share(UNIFORM, lo, hi) == pytest.approx(share)


def test_a_range_keeping_less_than_half_of_the_training_data_is_named():
    ref = {"inputs": {"a": UNIFORM, "b": UNIFORM}}
    inputs = (InputConfig("a", units="A", range=(0.0, 3.0)), InputConfig("b", range=(0.0, 9.0)), InputConfig("c"))
    (warning,) = range_warnings(inputs, ref, "4")
    assert warning.startswith("input a range [0, 3] keeps 30% of the training data of v4 (which spans 0 .. 10 A)")
    assert range_warnings(inputs, None, "4") == [] and range_warnings(inputs, {"inputs": {"a": {}}}, "4") == []
