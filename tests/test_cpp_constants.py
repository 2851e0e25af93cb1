"""The C++ side's lookup constants (csrc/lookup_constants.h, exported by ``fusedops._C``) equal
the Python ones (``fusedops.constants``): one set of values for every kernel."""

from __future__ import annotations

import pytest

from fusedops import constants

NAMES = ["POS_NONE", "POS_LEARNED", "POS_SINUSOID", "SINUSOID_MAX_POSITION"]


@pytest.mark.parametrize("name", NAMES)
def test_cpp_constant_equals_python(name):
    from fusedops import _C

    assert getattr(_C, name) == getattr(constants, name)
