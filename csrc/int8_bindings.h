// Torch-side argument handling of fusedops::int8_embedding_fwd shared by the CPU impl
// (int8_bindings.cpp) and the CUDA impl (int8_bindings_cuda.cpp): validation, output
// allocation and the type-erased kernel arguments (int8_math.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>

#include "int8_math.h"

namespace fusedops {

// The public op named in error messages.
constexpr const char* kInt8Op = "int8_embedding";

struct Int8Call {
  Int8EmbeddingArgs args;  // raw pointers into the tensors below
  at::Tensor ids;          // contiguous; int64 when ids and positions had different index types
  at::Tensor pos_ids;      // defined when positions are used
  at::Tensor qweight, scales, pos_weight;
  at::Tensor sinusoid_inv_freq;  // CUDA sinusoid mode: the launcher's [ceil(D/2)] fp32 buffer
  at::Tensor out;
  bool empty = false;      // nothing to compute (no tokens or D == 0)
};

// Checks everything that needs no reading of index values (dtypes, shapes, devices, the
// position_offset range, vocab_start >= 0: host values only), allocates the output and fills the
// kernel arguments. Every tensor must be on `device_type` (and, for CUDA, on input_ids' device).
// vocab_start: the table is a vocabulary shard (int8_math.h); its ids are then not range-checked
// by the bindings (the caller checks them against the whole vocabulary), only the positions.
Int8Call int8_prepare(const at::Tensor& input_ids, const at::Tensor& qweight,
                      const at::Tensor& scales, double scale,
                      const std::optional<at::Tensor>& pos_weight,
                      const std::optional<at::Tensor>& positions, int64_t position_offset,
                      int64_t pos_mode, double sinusoid_base, at::ScalarType out_dtype,
                      c10::DeviceType device_type, std::optional<int64_t> vocab_start);

// The CPU kernel without the index checks (the fusedops._C test hook of the masking rule).
at::Tensor int8_embedding_fwd_masked_cpu(const at::Tensor& input_ids, const at::Tensor& qweight,
                                         const at::Tensor& scales, double scale,
                                         const std::optional<at::Tensor>& pos_weight,
                                         const std::optional<at::Tensor>& positions,
                                         int64_t position_offset, int64_t pos_mode,
                                         double sinusoid_base, at::ScalarType out_dtype);

}  // namespace fusedops
