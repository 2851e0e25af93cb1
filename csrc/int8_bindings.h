// Torch-side argument handling of fusedops::int8_embedding_fwd shared by the CPU impl
// (int8_bindings.cpp) and the CUDA impl (int8_bindings_cuda.cpp): validation, output
// allocation and the type-erased kernel arguments (int8_math.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>

#include "int8_math.h"

namespace fusedops {

constexpr const char* kInt8Op = "int8_embedding";

struct Int8Call {
  Int8EmbeddingArgs args;  // raw pointers into the tensors below
  at::Tensor ids;          // contiguous; int64 when ids and positions had different index types
  at::Tensor pos_ids;      // defined when positions are used
  at::Tensor qweight, scales, pos_weight;
  at::Tensor out;
  bool empty = false;      // nothing to compute (no tokens or D == 0)
};

// Checks everything that needs no reading of index values (dtypes, shapes, devices, the
// position_offset range), allocates the output and fills the kernel arguments. Every tensor
// must be on `device_type` (and, for CUDA, on input_ids' device).
Int8Call int8_prepare(const at::Tensor& input_ids, const at::Tensor& qweight,
                      const at::Tensor& scales, double scale,
                      const std::optional<at::Tensor>& pos_weight,
                      const std::optional<at::Tensor>& positions, int64_t position_offset,
                      int64_t pos_mode, double sinusoid_base, at::ScalarType out_dtype,
                      c10::DeviceType device_type);

// IndexError with the same messages on every device (value: the first bad index).
[[noreturn]] void int8_bad_id(int64_t value, int64_t rows);
[[noreturn]] void int8_bad_position(int64_t value, int64_t pos_mode, int64_t pos_rows);

// Positions are limited to [0, 2^16) for the sinusoid, like every fused_embedding backend.
constexpr int64_t kInt8SinusoidMaxPosition = int64_t{1} << 16;

}  // namespace fusedops
