// Raw-pointer CPU kernel of the rotary position embedding (no at::Tensor here; rope_bindings.cpp
// validates the inputs and wraps it).
//
// Semantics (python/fusedops/reference.py is the oracle). R = rotary_dim (even, <= D); for
// j in [0, R/2) with c = cos[p, j], s = sin[p, j] (s negated when `backward`):
//   half layout (NeoX/Llama rotate_half), pairs (x[j], x[j + R/2]):
//     y[j] = x[j]*c - x[j+R/2]*s ;  y[j+R/2] = x[j+R/2]*c + x[j]*s
//   interleaved (GPT-J), pairs (x[2j], x[2j+1]):
//     y[2j] = x[2j]*c - x[2j+1]*s ;  y[2j+1] = x[2j+1]*c + x[2j]*s
// Features [R, D) are copied. Math in fp32: two products, one add/sub (no FMA), one
// round-to-nearest-even conversion to the element type per output.
#pragma once

#include <cstdint>

#include "float_convert.h"

namespace fusedops {
namespace cpu {

// One [B, H, S, D] operand: element (b, h, s, d) at b*stride_b + h*stride_h + s*stride_s + d.
struct RopeTensor {
  const void* in = nullptr;
  void* out = nullptr;  // may equal `in` (then with the same strides): rotated in place
  int64_t heads = 0;
  int64_t in_stride_b = 0, in_stride_h = 0, in_stride_s = 0;
  int64_t out_stride_b = 0, out_stride_h = 0, out_stride_s = 0;
};

// A cos or sin table: value (batch, row, j) at batch*stride_b + row*stride_row + j*stride_col.
// Cache mode: stride_b is ignored (0) and row = position; gathered mode: row = s.
struct RopeTable {
  const void* data = nullptr;
  FloatKind kind = FloatKind::kF32;
  int64_t stride_b = 0, stride_row = 0, stride_col = 1;
};

struct RopeArgs {
  RopeTensor q;                 // [B, Hq, S, D]
  RopeTensor k;                 // [B, Hk, S, D]; heads = 0 when absent
  FloatKind kind = FloatKind::kF32;  // element type of q, k and the outputs
  int64_t batch = 0, seq = 0, dim = 0, rotary_dim = 0;
  RopeTable cos, sin;
  bool cache = true;            // rows indexed by position (else gathered: row = s)
  const void* positions = nullptr;  // [B or 1, S] int32/int64 or nullptr: pos = offset + s
  bool positions_int64 = true;
  int64_t positions_stride_b = 0;   // 0 when shared by the batch
  int64_t positions_stride_s = 1;
  int64_t position_offset = 0;
  bool interleaved = false;
  bool backward = false;        // rotate by the negated angle
};

// Rotates q and k. Positions are validated by the caller (the kernel reads the tables at the
// rows it is given).
void rope_fwd(const RopeArgs& args);

// Which implementation rope_fwd uses on this CPU ("avx2" or "generic"), for tests and bench.
const char* rope_isa();

}  // namespace cpu
}  // namespace fusedops
