// Raw-pointer CPU kernels of the factorized embedding (no at::Tensor here;
// factorized_embedding_bindings.cpp wraps them).
//
// The token table is W ~= a @ b (a [V, r], b [r, D]) except for K hot tokens whose rows are
// stored exactly (hot_rows [K, D]); hot_slots [V] maps a token to its hot row (-1: not hot).
// Element types T: float, c10::Half, c10::BFloat16 (products and sums in fp32, one
// round-to-nearest-even conversion per output element). Index types I: int32_t, int64_t.
// The callers validate ids, positions and hot slots first; the kernels still never read or
// write outside the tables: an id outside [0, V) gives only the positional term (forward) and
// is ignored (backward), a slot outside [0, K) counts as "not hot".
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "embedding_cpu.h"
#include "lookup_constants.h"

namespace fusedops {
namespace cpu {

// The tokens, scale, positional term and output are LookupFwdArgs' (embedding_cpu.h).
template <typename T, typename I>
struct FactorizedFwdArgs : LookupFwdArgs<T, I> {
  const T* a = nullptr;            // [num_rows, rank], element (t, k) at t * a_row_stride + k
  int64_t num_rows = 0;            // V
  int64_t a_row_stride = 0;
  int64_t rank = 0;                // r
  const T* b = nullptr;            // [rank, dim], element (k, d) at k * b_row_stride + d
  int64_t b_row_stride = 0;
  const int32_t* hot_slots = nullptr;  // [num_rows] or nullptr (no hot tokens)
  const T* hot_rows = nullptr;     // [num_hot, dim]
  int64_t num_hot = 0;             // K
  int64_t hot_row_stride = 0;
};

// out[n] = row(ids[n]) * scale + P[pos(n)], row(t) = hot_rows[hot_slots[t]] for a hot token,
// else a[t] @ b (fp32 products and sums; each output element is multiplied by scale, then the
// positional value is added, like the reference).
template <typename T, typename I>
void factorized_fwd(const FactorizedFwdArgs<T, I>& args);

template <typename T, typename I>
struct FactorizedBwdArgs {
  const T* grad_out = nullptr;     // [num_tokens, dim], contiguous
  const I* ids = nullptr;          // [num_tokens]
  int64_t num_tokens = 0;
  const T* a = nullptr;            // [num_rows, rank] with a_row_stride (read for grad_b)
  int64_t num_rows = 0;
  int64_t a_row_stride = 0;
  int64_t rank = 0;
  const T* b = nullptr;            // [rank, dim] with b_row_stride (read for grad_a)
  int64_t b_row_stride = 0;
  int64_t dim = 0;
  const int32_t* hot_slots = nullptr;  // [num_rows] or nullptr
  int64_t num_hot = 0;
  float scale = 1.0f;
  int64_t padding_idx = -1;        // token whose rows get no gradient; -1: none
  T* grad_a = nullptr;             // [num_rows, rank] contiguous, fully written; nullptr: skip
  T* grad_b = nullptr;             // [rank, dim] contiguous, fully written; nullptr: skip
  T* grad_hot = nullptr;           // [num_hot, dim] contiguous, fully written; nullptr: skip
};

// With F the factor tokens (id in range, not hot, not padding_idx) and H_k the tokens of hot
// slot k (not padding_idx), G[t] = sum_{n in F, ids[n] == t} grad_out[n] (fp32, token order):
//   grad_a[t]   = scale * G[t] @ b^T
//   grad_b      = scale * sum_t a[t]^T G[t]      (t ascending)
//   grad_hot[k] = scale * sum_{n in H_k} grad_out[n]
// Every output element is reduced by one thread in a fixed order, so the results are
// bit-identical for any thread count.
template <typename T, typename I>
void factorized_bwd(const FactorizedBwdArgs<T, I>& args);

}  // namespace cpu
}  // namespace fusedops
