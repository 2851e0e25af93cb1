// Raw-pointer CPU kernels of the fused BERT embedding + LayerNorm (no at::Tensor here;
// embedding_layernorm_bindings.cpp wraps them).
//
// x[n] = weight[ids[n]] + type_weight[tt(n)] + pos_weight[pos(n)] (fp32, in that order), then
// out[n] = (x[n] - mean) * rstd * ln_weight + ln_bias with rstd = 1 / sqrt(var + eps) (biased
// variance, all in fp32). Element types T: float, c10::Half, c10::BFloat16 (one
// round-to-nearest-even conversion per stored element). Index types I: int32_t, int64_t.
// Indices must be in range: the bindings check every one before calling.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fusedops {
namespace cpu {

template <typename T, typename I>
struct EmbeddingLayerNormArgs {
  const I* ids = nullptr;            // [num_tokens], flat row n has s = n % seq_len
  int64_t num_tokens = 0;            // N
  int64_t seq_len = 1;               // S (N % S == 0)
  int64_t dim = 0;                   // D
  const T* weight = nullptr;         // [V, D], row r at r * weight_row_stride
  int64_t weight_row_stride = 0;
  const T* pos_weight = nullptr;     // [P, D] or nullptr: no positional term
  int64_t pos_row_stride = 0;
  int64_t num_pos_rows = 0;          // P
  const I* positions = nullptr;      // [num_tokens] or nullptr: pos = position_offset + s
  int64_t position_offset = 0;
  const T* type_weight = nullptr;    // [T, D] or nullptr: no token-type term
  int64_t type_row_stride = 0;
  int64_t num_type_rows = 0;         // T
  const I* type_ids = nullptr;       // [num_tokens] or nullptr: row 0 for every token
  const T* ln_weight = nullptr;      // [D] or nullptr (1)
  const T* ln_bias = nullptr;        // [D] or nullptr (0)
  float eps = 1e-12f;
};

// Writes out [N, D] (contiguous) and the per-row mean and rstd [N] (fp32, for the backward).
template <typename T, typename I>
void embedding_layernorm_fwd(const EmbeddingLayerNormArgs<T, I>& a, T* out, float* mean,
                             float* rstd);

// Gradient outputs, contiguous; nullptr: not wanted (or the term is absent).
template <typename T>
struct EmbeddingLayerNormGrads {
  T* weight = nullptr;      // [V, D]; row padding_idx is zero
  int64_t num_rows = 0;     // V
  int64_t padding_idx = -1;  // -1: none
  T* pos_weight = nullptr;  // [P, D]
  int64_t pos_rows = 0;
  T* type_weight = nullptr;  // [T, D]
  int64_t type_rows = 0;
  T* ln_weight = nullptr;  // [D]
  T* ln_bias = nullptr;    // [D]
};

// The backward from grad_out [N, D] (contiguous) and the forward's mean and rstd. Every sum is
// in fp32 in an order fixed by N and D alone (not by the thread count): bit-identical results.
template <typename T, typename I>
void embedding_layernorm_bwd(const EmbeddingLayerNormArgs<T, I>& a, const T* grad_out,
                             const float* mean, const float* rstd,
                             const EmbeddingLayerNormGrads<T>& grads);

}  // namespace cpu
}  // namespace fusedops
