"""The 64-bit offset check of ``fusedops.testing`` on hand-written PTX (no compile needed).

A row offset ``row * stride`` of an int32 stride is safe past 2**31 elements only when the
product is 64 bits wide: ``mul.wide.s32`` of the two 32-bit values, or ``mul.lo.s64`` of their
sign extensions. ``mul.lo.s32`` / ``mad.lo.s32`` / ``shl.b32`` of the stride wrap. The compile
tests of each op run the check on every config and on the kernels with their int64 casts
removed (``module_without_int64_casts``), where it must fail.
"""

from __future__ import annotations

import pytest

from fusedops.testing import GpuCompileReport, offset_products

ENTRY = "k"
HEADER = f"""
.visible .entry {ENTRY}(
    .param .u64 .ptr .global .align 1 {ENTRY}_param_0,
    .param .u32 {ENTRY}_param_1,
    .param .u32 {ENTRY}_param_2
)
{{
    ld.param.b64 %rd1, [{ENTRY}_param_0];
    ld.param.b32 %r1, [{ENTRY}_param_1];
    mov.u32 %r2, %ctaid.x;
"""
PARAMS = {"stride": 1, "n_rows": 2}


def _ptx(*instructions: str) -> str:
    return HEADER + "".join(f"    {i}\n" for i in instructions) + "    ret;\n}\n"


def _report(ptx: str) -> GpuCompileReport:
    signature = {"x_ptr": "*fp16", "stride": "i32", "n_rows": "i32", "BLOCK": "constexpr"}
    return GpuCompileReport(
        kernel_name=ENTRY,
        arch=80,
        num_warps=4,
        num_stages=1,
        constexprs={"BLOCK": 16},
        registers=32,
        spill_stores=0,
        spill_loads=0,
        stack_frame=0,
        shared_bytes=0,
        counts={},
        signature=signature,
        ptx=ptx,
    )


# Instructions by name; the stride is %r1, a row index %r2.
WIDE = {
    "mul.wide.s32": ("mul.wide.s32 %rd2, %r2, %r1;",),
    "mad.wide.s32": ("mad.wide.s32 %rd2, %r2, %r1, %rd1;",),
    "cvt + mul.lo.s64": ("cvt.s64.s32 %rd2, %r1;", "mul.lo.s64 %rd3, %rd4, %rd2;"),
    "copy + cvt + shl.b64": (
        "mov.b32 %r3, %r1;",
        "cvt.s64.s32 %rd2, %r3;",
        "shl.b64 %rd3, %rd2, 1;",
    ),
    "predicated": ("@%p1 mul.wide.s32 %rd2, %r1, %r2;",),
}
NARROW = {
    "mul.lo.s32": ("mul.lo.s32 %r3, %r2, %r1;", "mad.wide.s32 %rd2, %r3, 2, %rd1;"),
    "mad.lo.s32": ("mad.lo.s32 %r3, %r1, %r2, %r4;",),
    "shl.b32": ("shl.b32 %r3, %r1, 1;",),
    "copy then mul.lo.u32": ("mov.b32 %r3, %r1;", "mul.lo.u32 %r4, %r3, %r2;"),
}


@pytest.mark.parametrize("body", WIDE.values(), ids=list(WIDE))
def test_wide_products_pass(body):
    found = offset_products(_ptx(*body), PARAMS)
    assert found["stride"] and all(p.startswith("wide: ") for p in found["stride"]), found
    assert found["n_rows"] == []  # never loaded
    _report(_ptx(*body)).assert_clean(int64_offsets=("stride",))


@pytest.mark.parametrize("body", NARROW.values(), ids=list(NARROW))
def test_narrow_products_fail(body):
    found = offset_products(_ptx(*body), PARAMS)
    assert any(p.startswith("narrow: ") for p in found["stride"]), found
    with pytest.raises(AssertionError, match="stride enters 1 32-bit product"):
        _report(_ptx(*body)).assert_clean(int64_offsets=("stride",))


def test_a_narrow_product_beside_wide_ones_fails():
    ptx = _ptx(*WIDE["mul.wide.s32"], *NARROW["mad.lo.s32"])
    with pytest.raises(AssertionError, match="32-bit product"):
        _report(ptx).assert_clean(int64_offsets=("stride",))


def test_a_parameter_loaded_as_64_bits_is_followed():
    ptx = _ptx(f"ld.param.s32 %rd5, [{ENTRY}_param_2];", "mul.lo.s64 %rd6, %rd5, %rd1;")
    assert offset_products(ptx, PARAMS)["n_rows"] == ["wide: mul.lo.s64 %rd6, %rd5, %rd1"]


def test_products_of_other_registers_are_not_counted():
    found = offset_products(_ptx("mul.lo.s32 %r3, %r2, %r2;", "add.s32 %r4, %r1, %r2;"), PARAMS)
    assert found == {"stride": [], "n_rows": []}


def test_check_fails_when_no_listed_parameter_is_multiplied():
    with pytest.raises(AssertionError, match="enters a 64-bit product"):
        _report(_ptx("add.s32 %r3, %r1, %r2;")).assert_clean(int64_offsets=("stride", "n_rows"))


def test_unknown_parameter_names_are_an_error():
    with pytest.raises(ValueError, match="no parameters"):
        _report(_ptx(*WIDE["mul.wide.s32"])).assert_clean(int64_offsets=("stride_x",))
