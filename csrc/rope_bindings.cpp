// Torch binding of fusedops::cpp_rope (CPU): argument validation and the call of the raw-pointer
// kernel in rope_cpu.cpp (the schema is in schemas.cpp).
//
// cpp_rope(q, k?, cos, sin, cos_strides, sin_strides, positions?, position_offset, cache,
//          interleaved, rotary_dim, backward, out_q!, out_k!?) -> ()
// q/out_q [B, Hq, S, D], k/out_k [B, Hk, S, D]: any strides with stride(-1) == 1; out_q may be
// q itself (rotation in place), otherwise it must not overlap q, k or out_k; no output may
// address an element twice, and out_q and out_k share no element (checked exactly for strided
// views of one buffer, e.g. disjoint head slices of a fused qkv tensor pass). cos/sin are read at
// element (batch, row, j) = batch*strides[0] + row*strides[1] + j*strides[2] for j < R/2:
// cache mode: 2-D [max_pos, *] tables, row = position (batch stride unused); gathered mode:
// 3-D [B or 1, S, *] tensors, row = s. Every element the kernel reads is checked to lie inside
// the tensor, and every position inside [0, max_pos), before anything is written.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "bindings_common.h"
#include "embedding_cpu.h"
#include "rope_cpu.h"

namespace fusedops {
namespace {

constexpr const char* kOp = "apply_rotary";

// q, k, out_q, out_k: [B, H, S, D] of a float dtype with a unit last stride.
void check_operand(const at::Tensor& t, const char* name) {
  check_cpu(t, kOp, name);
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), kOp, ": ", name,
                   " must be float32/float16/bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4, kOp, ": ", name, " must be 4-D [B, H, S, D], got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.size(3) <= 1 || t.stride(3) == 1, kOp, ": ", name,
                    " must have stride(-1) == 1, got strides ", t.strides());
}

// Whether two elements of `t` may share memory: a dim of size > 1 with stride 0, or strides
// that, sorted, do not each step past all that the smaller ones reach (slices, transposes and
// permutations of dense tensors always do).
bool self_overlapping(const at::Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims of size > 1
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return true;
    reach += (size - 1) * stride;
  }
  return false;
}

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// Whether `a` and `b` (one element type) address a common element. Views whose byte ranges
// are apart share nothing; otherwise a common element solves
//   sum_d i_d * a.stride(d) - sum_d j_d * b.stride(d) = (address of b - address of a) / size
// with indices inside the shapes. Terms of equal stride merge into one bounded integer and a
// depth-first search, largest stride first, settles it exactly; a search longer than
// kSearchSteps, or addresses not a whole number of elements apart, count as sharing.
bool share_elements(const at::Tensor& a, const at::Tensor& b) {
  constexpr int64_t kSearchSteps = 4096;
  if (a.numel() == 0 || b.numel() == 0) return false;
  const int64_t size = static_cast<int64_t>(a.element_size());
  auto extent = [](const at::Tensor& t) {
    int64_t e = 1;
    for (int64_t d = 0; d < t.dim(); ++d) e += (t.size(d) - 1) * t.stride(d);
    return e;
  };
  const auto start_a = reinterpret_cast<intptr_t>(a.const_data_ptr());
  const auto start_b = reinterpret_cast<intptr_t>(b.const_data_ptr());
  if (start_a + extent(a) * size <= start_b || start_b + extent(b) * size <= start_a) {
    return false;
  }
  if ((start_b - start_a) % size != 0) return true;
  std::map<int64_t, std::pair<int64_t, int64_t>, std::greater<int64_t>> bounds;  // [lo, hi]
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) > 0) bounds[a.stride(d)].second += a.size(d) - 1;
  }
  for (int64_t d = 0; d < b.dim(); ++d) {
    if (b.size(d) > 1 && b.stride(d) > 0) bounds[b.stride(d)].first -= b.size(d) - 1;
  }
  const std::vector<std::pair<int64_t, std::pair<int64_t, int64_t>>> terms(bounds.begin(),
                                                                           bounds.end());
  const size_t n = terms.size();
  std::vector<int64_t> low(n + 1, 0), high(n + 1, 0);  // sums reachable by terms i..
  for (size_t i = n; i-- > 0;) {
    low[i] = low[i + 1] + terms[i].second.first * terms[i].first;
    high[i] = high[i + 1] + terms[i].second.second * terms[i].first;
  }
  std::vector<std::pair<size_t, int64_t>> stack{{0, (start_b - start_a) / size}};
  int64_t steps = kSearchSteps;
  while (!stack.empty()) {
    const auto [i, rest] = stack.back();
    stack.pop_back();
    if (i == n) {
      if (rest == 0) return true;
      continue;
    }
    const int64_t stride = terms[i].first;
    const int64_t first = std::max(terms[i].second.first, -floor_div(high[i + 1] - rest, stride));
    const int64_t last = std::min(terms[i].second.second, floor_div(rest - low[i + 1], stride));
    steps -= std::max<int64_t>(0, last - first + 1);
    if (steps < 0) return true;
    for (int64_t v = first; v <= last; ++v) stack.emplace_back(i + 1, rest - v * stride);
  }
  return false;
}

// Rejects outputs that share an element with another operand.
void check_no_overlap(const at::Tensor& a, const at::Tensor& b, const char* a_name,
                      const char* b_name) {
  TORCH_CHECK_VALUE(!share_elements(a, b), kOp, ": ", a_name, " overlaps ", b_name,
                    " in memory");
}

void check_output(const at::Tensor& out, const at::Tensor& in, const char* name,
                  const char* in_name) {
  check_operand(out, name);
  TORCH_CHECK_TYPE(out.scalar_type() == in.scalar_type(), kOp, ": ", name, " dtype ",
                   out.scalar_type(), " must equal ", in_name, " dtype ", in.scalar_type());
  TORCH_CHECK_VALUE(out.sizes() == in.sizes(), kOp, ": ", name, " shape ", out.sizes(),
                    " must equal ", in_name, " shape ", in.sizes());
  if (out.numel() == 0) return;
  TORCH_CHECK_VALUE(!self_overlapping(out), kOp, ": ", name,
                    " has overlapping elements (strides ", out.strides(), ")");
  // Either the very same elements (in place) or no overlap at all.
  if (out.data_ptr() == in.data_ptr()) {
    TORCH_CHECK_VALUE(out.strides() == in.strides(), kOp, ": ", name, " aliases ", in_name,
                      " with different strides ", out.strides(), " vs ", in.strides());
  } else {
    check_no_overlap(out, in, name, in_name);
  }
}

// The largest element offset the kernel reads from `t` through `strides` (non-negative), over
// batches [0, batches), rows [0, rows), columns [0, cols); must lie inside t's own extent.
void check_table(const at::Tensor& t, at::IntArrayRef strides, int64_t batches, int64_t rows,
                 int64_t cols, const char* name) {
  check_cpu(t, kOp, name);
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), kOp, ": ", name,
                   " must be float32/float16/bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(strides.size() == 3, kOp, ": ", name,
                    "_strides must be 3 element strides (batch, row, col), got ", strides);
  TORCH_CHECK_VALUE(strides[0] >= 0 && strides[1] >= 0 && strides[2] >= 0, kOp, ": ", name,
                    "_strides must be non-negative, got ", strides);
  if (batches == 0 || rows == 0 || cols == 0) return;
  int64_t extent = 0;  // largest offset inside t
  for (int64_t d = 0; d < t.dim(); ++d) {
    TORCH_CHECK_VALUE(t.size(d) > 0, kOp, ": ", name, " is empty (shape ", t.sizes(), ")");
    TORCH_CHECK_VALUE(t.stride(d) >= 0, kOp, ": ", name, " has a negative stride ",
                      t.strides());
    extent += (t.size(d) - 1) * t.stride(d);
  }
  const int64_t reach =
      (batches - 1) * strides[0] + (rows - 1) * strides[1] + (cols - 1) * strides[2];
  TORCH_CHECK_VALUE(reach <= extent, kOp, ": ", name, " of shape ", t.sizes(), " and strides ",
                    t.strides(), " is too small for ", batches, " batch(es) x ", rows,
                    " rows x ", cols, " columns with element strides ", strides);
}

template <typename I>
void check_positions(const at::Tensor& pos, int64_t max_pos) {
  const I* p = pos.const_data_ptr<I>();
  const int64_t bad = cpu::find_first_outside<I>(p, pos.numel(), max_pos);
  TORCH_CHECK_INDEX(bad < 0, kOp, ": position ", static_cast<int64_t>(bad < 0 ? 0 : p[bad]),
                    " outside the cos/sin cache [0, ", max_pos, ")");
}

cpu::RopeTensor operand(const at::Tensor& in, const at::Tensor& out) {
  cpu::RopeTensor r;
  r.in = in.const_data_ptr();
  r.out = out.data_ptr();
  r.heads = in.size(1);
  r.in_stride_b = in.stride(0);
  r.in_stride_h = in.stride(1);
  r.in_stride_s = in.stride(2);
  r.out_stride_b = out.stride(0);
  r.out_stride_h = out.stride(1);
  r.out_stride_s = out.stride(2);
  return r;
}

void rope_cpu(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& cos,
              const at::Tensor& sin, at::IntArrayRef cos_strides, at::IntArrayRef sin_strides,
              const std::optional<at::Tensor>& positions, int64_t position_offset, bool cache,
              bool interleaved, int64_t rotary_dim, bool backward, const at::Tensor& out_q,
              const std::optional<at::Tensor>& out_k) {
  check_operand(q, "q");
  const int64_t batch = q.size(0);
  const int64_t seq = q.size(2);
  const int64_t dim = q.size(3);
  TORCH_CHECK_VALUE(rotary_dim >= 2 && rotary_dim % 2 == 0 && rotary_dim <= dim, kOp,
                    ": rotary_dim must be even and in [2, D] with D = ", dim, ", got ",
                    rotary_dim);
  check_output(out_q, q, "out_q", "q");
  TORCH_CHECK_VALUE(k.has_value() == out_k.has_value(), kOp,
                    ": out_k must be given exactly when k is (k ",
                    k.has_value() ? "given" : "None", ", out_k ",
                    out_k.has_value() ? "given" : "None", ")");
  if (k.has_value()) {
    check_operand(*k, "k");
    TORCH_CHECK_TYPE(k->scalar_type() == q.scalar_type(), kOp, ": k dtype ", k->scalar_type(),
                     " must equal q dtype ", q.scalar_type());
    TORCH_CHECK_VALUE(k->size(0) == batch && k->size(2) == seq && k->size(3) == dim, kOp,
                      ": k shape ", k->sizes(), " must match q shape ", q.sizes(),
                      " in B, S and D");
    check_output(*out_k, *k, "out_k", "k");
    if (out_q.numel() > 0 && out_k->numel() > 0) {
      check_no_overlap(out_q, *out_k, "out_q", "out_k");
      check_no_overlap(out_q, *k, "out_q", "k");
      check_no_overlap(*out_k, q, "out_k", "q");
    }
  }

  const int64_t half = rotary_dim / 2;
  int64_t max_pos = 0;
  if (cache) {
    TORCH_CHECK_VALUE(cos.dim() == 2 && sin.dim() == 2, kOp,
                      ": cache mode needs 2-D cos/sin tables [max_pos, *], got shapes ",
                      cos.sizes(), " and ", sin.sizes());
    TORCH_CHECK_VALUE(cos.size(0) == sin.size(0), kOp, ": cos has ", cos.size(0),
                      " positions but sin has ", sin.size(0));
    max_pos = cos.size(0);
    check_table(cos, cos_strides, 1, max_pos, half, "cos");
    check_table(sin, sin_strides, 1, max_pos, half, "sin");
  } else {
    TORCH_CHECK_VALUE(!positions.has_value() && position_offset == 0, kOp,
                      ": positions/position_offset are not allowed with gathered cos/sin");
    for (const at::Tensor* t : {&cos, &sin}) {
      TORCH_CHECK_VALUE(t->dim() == 3 && (t->size(0) == 1 || t->size(0) == batch) &&
                            t->size(1) == seq,
                        kOp, ": gathered cos/sin must be [B or 1, S, *] with B = ", batch,
                        ", S = ", seq, ", got shape ", t->sizes());
    }
    // A leading dim of 1 is shared by the batch whatever its stride says.
    check_table(cos, cos_strides, cos.size(0), seq, half, "cos");
    check_table(sin, sin_strides, sin.size(0), seq, half, "sin");
  }

  cpu::RopeArgs a;
  a.q = operand(q, out_q);
  if (k.has_value()) a.k = operand(*k, *out_k);
  a.kind = float_kind(q.scalar_type());
  a.batch = batch;
  a.seq = seq;
  a.dim = dim;
  a.rotary_dim = rotary_dim;
  a.cache = cache;
  a.interleaved = interleaved;
  a.backward = backward;
  a.cos.data = cos.const_data_ptr();
  a.cos.kind = float_kind(cos.scalar_type());
  a.cos.stride_b = (cache || cos.size(0) == 1) ? 0 : cos_strides[0];
  a.cos.stride_row = cos_strides[1];
  a.cos.stride_col = cos_strides[2];
  a.sin.data = sin.const_data_ptr();
  a.sin.kind = float_kind(sin.scalar_type());
  a.sin.stride_b = (cache || sin.size(0) == 1) ? 0 : sin_strides[0];
  a.sin.stride_row = sin_strides[1];
  a.sin.stride_col = sin_strides[2];

  const bool empty = batch == 0 || seq == 0 || dim == 0 || (q.size(1) + a.k.heads) == 0;
  at::Tensor pos;
  if (cache && positions.has_value()) {
    check_cpu(*positions, kOp, "positions");
    TORCH_CHECK_TYPE(
        positions->scalar_type() == at::kInt || positions->scalar_type() == at::kLong, kOp,
        ": positions must be int32 or int64, got ", positions->scalar_type());
    TORCH_CHECK_VALUE(positions->dim() == 2 &&
                          (positions->size(0) == 1 || positions->size(0) == batch) &&
                          positions->size(1) == seq,
                      kOp, ": positions must be [B or 1, S] with B = ", batch, ", S = ", seq,
                      ", got shape ", positions->sizes());
    pos = positions->contiguous();
    if (!empty) {
      if (pos.scalar_type() == at::kLong) {
        check_positions<int64_t>(pos, max_pos);
      } else {
        check_positions<int32_t>(pos, max_pos);
      }
    }
    a.positions = pos.const_data_ptr();
    a.positions_int64 = pos.scalar_type() == at::kLong;
    a.positions_stride_b = pos.size(0) == 1 ? 0 : seq;
    a.positions_stride_s = 1;
  } else if (cache && !empty) {
    TORCH_CHECK_INDEX(position_offset >= 0 && position_offset < max_pos, kOp, ": position ",
                      position_offset, " (position_offset) outside the cos/sin cache [0, ",
                      max_pos, ")");
    // offset + S - 1 < max_pos, written without overflow.
    TORCH_CHECK_INDEX(seq - 1 < max_pos - position_offset, kOp, ": position ",
                      position_offset + seq - 1, " (position_offset ", position_offset,
                      " + sequence length ", seq, " - 1) outside the cos/sin cache [0, ",
                      max_pos, ")");
  }
  a.position_offset = position_offset;
  if (empty) return;
  if (out_q.data_ptr() != q.data_ptr()) advise_huge_pages(out_q);
  if (k.has_value() && out_k->data_ptr() != k->data_ptr()) advise_huge_pages(*out_k);
  cpu::rope_fwd(a);
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) { m.impl("cpp_rope", &fusedops::rope_cpu); }
