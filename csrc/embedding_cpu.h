// Raw-pointer CPU kernels of the fused embedding (no at::Tensor here; embedding_bindings.cpp wraps
// them).
//
// Element types T: float, c10::Half, c10::BFloat16 (arithmetic in fp32, one round-to-nearest-
// even conversion per output element). Index types I: int32_t, int64_t.
// A table may be a vocabulary shard (vocab_start: id t is row t - vocab_start, shard_row). The
// callers validate the indices of a whole table first (find_first_outside); the kernels never
// read or write outside the tables: ids without a row (other shards' ids, or out of range) get
// only the positional term (forward) or are ignored (backward).
#pragma once

#include <cstdint>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "lookup_constants.h"

namespace fusedops {
namespace cpu {

// The table row of id t when the table holds rows [vocab_start, vocab_start + num_rows) of a
// vocabulary (vocab_start 0: the whole table), or -1 when t lies outside. Unsigned arithmetic:
// wraps instead of overflowing for any id, and one compare checks both ends.
inline int64_t shard_row(int64_t id, int64_t vocab_start, int64_t num_rows) {
  const uint64_t row = static_cast<uint64_t>(id) - static_cast<uint64_t>(vocab_start);
  return row < static_cast<uint64_t>(num_rows) ? static_cast<int64_t>(row) : -1;
}

// Index of the first v[k] outside [0, hi), or -1 when all are inside (hi >= 0).
template <typename I>
int64_t find_first_outside(const I* v, int64_t n, int64_t hi);

// True when positions[b * seq_len + s] == positions[s] for every b (positions shared across the
// batch, e.g. arange(S) broadcast): the forward then computes each positional row once.
template <typename I>
bool rows_repeat(const I* positions, int64_t num_tokens, int64_t seq_len);

// What every table-lookup forward reads besides its table (EmbeddingFwdArgs, FactorizedFwdArgs):
// the tokens, the scale, the positional term and the output.
template <typename T, typename I>
struct LookupFwdArgs {
  const I* ids = nullptr;          // [num_tokens], flat token n has s = n % seq_len
  int64_t num_tokens = 0;          // N
  int64_t seq_len = 1;             // S (N % S == 0)
  int64_t dim = 0;                 // D
  float scale = 1.0f;
  PosMode pos_mode = PosMode::kNone;
  const T* pos_weight = nullptr;   // [pos_rows, dim] (kLearned)
  int64_t pos_rows = 0;            // P
  int64_t pos_row_stride = 0;
  const I* positions = nullptr;    // [num_tokens] or nullptr: pos = position_offset + s
  int64_t position_offset = 0;
  float sinusoid_coef = 0.0f;      // fp32(ln(base) / D), see fusedops_math.h
  T* out = nullptr;                // [num_tokens, dim], contiguous

  // Token n's position.
  int64_t position(int64_t n) const {
    return positions != nullptr ? static_cast<int64_t>(positions[n])
                                : position_offset + n % seq_len;
  }
  // True when every batch row has the positions of the first (always without positions).
  bool positions_repeat() const {
    return positions == nullptr || rows_repeat(positions, num_tokens, seq_len);
  }
};

// LookupFwdArgs plus the table.
template <typename T, typename I>
struct EmbeddingFwdArgs : LookupFwdArgs<T, I> {
  const T* weight = nullptr;       // [num_rows, dim], element (r, d) at r * weight_row_stride + d
  int64_t num_rows = 0;            // V
  int64_t vocab_start = 0;         // id t reads row t - vocab_start (shard_row)
  int64_t weight_row_stride = 0;
};

template <typename T, typename I>
void embedding_fwd(const EmbeddingFwdArgs<T, I>& args);

template <typename T, typename I>
struct EmbeddingBwdArgs {
  const T* grad_out = nullptr;  // [num_tokens, dim], contiguous
  const I* indices = nullptr;   // [num_tokens]
  int64_t num_tokens = 0;
  int64_t dim = 0;
  int64_t num_rows = 0;         // rows of grad_table
  int64_t vocab_start = 0;      // index t is row t - vocab_start (shard_row)
  float scale = 1.0f;
  int64_t padding_idx = -1;     // row (of the shard) left at zero; -1: none
  T* grad_table = nullptr;      // [num_rows, dim], contiguous; fully written
};

// grad_table[r] = scale * sum_{n : indices[n] - vocab_start == r} grad_out[n], summed in fp32 in
// token order; indices whose row falls outside [0, num_rows) are ignored.
// Each row is produced by a single thread, so the result is bit-identical for any thread count.
template <typename T, typename I>
void embedding_bwd(const EmbeddingBwdArgs<T, I>& args);

// The sinusoid's row P[pos, :] (fusedops_math.h) into prow (capacity 2 * ceil(D/2) floats: an odd
// D writes one spare element); inv_freq[i] = sinusoid_inv_freq(i, coef) for i < ceil(D/2).
void sinusoid_row(int64_t pos, const float* inv_freq, int64_t dim, float* prow);

// inv_freq [ceil(dim / 2)] of sinusoid_row for sinusoid_coef `coef`.
std::vector<float> sinusoid_inv_freqs(int64_t dim, float coef);

}  // namespace cpu
}  // namespace fusedops

// M(T, I) for every element type T and index type I the CPU lookup kernels are instantiated for
// (their explicit template instantiations).
#define FUSEDOPS_FOR_EACH_TABLE_AND_INDEX_TYPE(M)                                  \
  M(float, int32_t) M(float, int64_t) M(c10::Half, int32_t) M(c10::Half, int64_t) \
  M(c10::BFloat16, int32_t) M(c10::BFloat16, int64_t)
