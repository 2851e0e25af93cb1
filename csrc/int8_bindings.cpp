// Torch bindings of fusedops::int8_embedding_fwd: argument validation shared with the CUDA impl,
// and the CPU implementation (the schema is declared in bindings.cpp's TORCH_LIBRARY).
#include "int8_bindings.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "embedding_cpu.h"
#include "int8_embedding_cpu.h"

namespace fusedops {
namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

FloatKind float_kind(at::ScalarType t) {
  return t == at::kFloat ? FloatKind::kF32 : t == at::kHalf ? FloatKind::kF16 : FloatKind::kBF16;
}

void check_device(const at::Tensor& t, c10::DeviceType device_type, const at::Tensor& ref,
                  const char* name) {
  TORCH_CHECK_VALUE(t.device().type() == device_type && t.device() == ref.device(), kInt8Op,
                    ": ", name, " must be on ", ref.device(), " like input_ids, got ",
                    t.device());
}

// A 2-D tensor with unit inner stride (a copy only when the caller passed another layout).
at::Tensor unit_inner_stride(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

}  // namespace

void int8_bad_id(int64_t value, int64_t rows) {
  TORCH_CHECK_INDEX(false, kInt8Op, ": input_ids contains id ", value, " outside [0, ", rows, ")");
}

void int8_bad_position(int64_t value, int64_t pos_mode, int64_t pos_rows) {
  if (pos_mode == 1) {
    TORCH_CHECK_INDEX(false, kInt8Op, ": position ", value, " outside the positional table [0, ",
                      pos_rows, ")");
  }
  TORCH_CHECK_INDEX(false, kInt8Op, ": sinusoid position ", value, " outside [0, ",
                    kInt8SinusoidMaxPosition, ")");
}

Int8Call int8_prepare(const at::Tensor& input_ids, const at::Tensor& qweight,
                      const at::Tensor& scales, double scale,
                      const std::optional<at::Tensor>& pos_weight,
                      const std::optional<at::Tensor>& positions, int64_t position_offset,
                      int64_t pos_mode, double sinusoid_base, at::ScalarType out_dtype,
                      c10::DeviceType device_type) {
  const char* op = kInt8Op;
  TORCH_CHECK_VALUE(input_ids.device().type() == device_type, op,
                    ": input_ids must be on the device of this kernel (", device_type, "), got ",
                    input_ids.device());
  TORCH_CHECK_TYPE(input_ids.scalar_type() == at::kInt || input_ids.scalar_type() == at::kLong,
                   op, ": input_ids must be int32 or int64, got ", input_ids.scalar_type());
  TORCH_CHECK_VALUE(input_ids.dim() >= 1, op, ": input_ids must have at least 1 dim, got ",
                    input_ids.dim());
  check_device(qweight, device_type, input_ids, "qweight");
  TORCH_CHECK_TYPE(qweight.scalar_type() == at::kChar, op, ": qweight must be int8, got ",
                   qweight.scalar_type());
  TORCH_CHECK_VALUE(qweight.dim() == 2, op, ": qweight must be 2-D [V, D], got shape ",
                    qweight.sizes());
  check_device(scales, device_type, input_ids, "scales");
  TORCH_CHECK_TYPE(is_float_dtype(scales.scalar_type()), op,
                   ": scales must be float32/float16/bfloat16, got ", scales.scalar_type());
  const int64_t rows = qweight.size(0);
  const int64_t dim = qweight.size(1);
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == rows && scales.size(1) >= 1 &&
                        dim % scales.size(1) == 0,
                    op, ": scales must be [V, G] with V = ", rows, " and G >= 1 dividing D = ",
                    dim, ", got shape ", scales.sizes());
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16,
                   op, ": out_dtype must be float32/float16/bfloat16, got ", out_dtype);
  TORCH_CHECK_VALUE(pos_mode >= 0 && pos_mode <= 2, op,
                    ": pos_mode must be 0 (none), 1 (learned) or 2 (sinusoid), got ", pos_mode);
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);

  Int8Call call;
  call.qweight = unit_inner_stride(qweight);
  call.scales = unit_inner_stride(scales);
  int64_t pos_rows = 0;
  if (pos_mode == 1) {
    TORCH_CHECK_VALUE(pos_weight.has_value(), op, ": pos_mode 1 (learned) needs pos_weight");
    check_device(*pos_weight, device_type, input_ids, "pos_weight");
    TORCH_CHECK_TYPE(is_float_dtype(pos_weight->scalar_type()), op,
                     ": pos_weight must be float32/float16/bfloat16, got ",
                     pos_weight->scalar_type());
    TORCH_CHECK_VALUE(pos_weight->dim() == 2 && pos_weight->size(1) == dim, op,
                      ": pos_weight must be [P, D] with D = ", dim, ", got shape ",
                      pos_weight->sizes());
    call.pos_weight = unit_inner_stride(*pos_weight);
    pos_rows = pos_weight->size(0);
  }
  if (pos_mode == 2) {
    TORCH_CHECK_VALUE(std::isfinite(sinusoid_base) && sinusoid_base > 0.0, op,
                      ": sinusoid_base must be a positive finite number, got ", sinusoid_base);
  }
  const bool use_positions = pos_mode != 0 && positions.has_value();
  call.ids = input_ids.contiguous();
  if (use_positions) {
    check_device(*positions, device_type, input_ids, "positions");
    TORCH_CHECK_TYPE(
        positions->scalar_type() == at::kInt || positions->scalar_type() == at::kLong, op,
        ": positions must be int32 or int64, got ", positions->scalar_type());
    TORCH_CHECK_VALUE(positions->sizes() == input_ids.sizes(), op, ": positions shape ",
                      positions->sizes(), " must equal input_ids shape ", input_ids.sizes());
    call.pos_ids = positions->contiguous();
    // One index type per kernel: widen the int32 side when they differ.
    if (call.pos_ids.scalar_type() != call.ids.scalar_type()) {
      call.ids = call.ids.to(at::kLong);
      call.pos_ids = call.pos_ids.to(at::kLong);
    }
  }

  std::vector<int64_t> out_shape(input_ids.sizes().begin(), input_ids.sizes().end());
  out_shape.push_back(dim);
  call.out = at::empty(out_shape, input_ids.options().dtype(out_dtype));
  const int64_t num_tokens = input_ids.numel();
  const int64_t seq = input_ids.size(-1);
  call.empty = num_tokens == 0 || dim == 0;

  // Positions offset + s for s in [0, S) (no positions tensor): the first invalid one.
  if (!call.empty && pos_mode != 0 && !use_positions) {
    const int64_t hi = pos_mode == 1 ? pos_rows : kInt8SinusoidMaxPosition;
    if (position_offset < 0 || position_offset >= hi) {
      int8_bad_position(position_offset, pos_mode, pos_rows);
    }
    if (seq - 1 >= hi - position_offset) {
      // Learned: the first position past the table; sinusoid: the last position asked for.
      int8_bad_position(pos_mode == 1 ? hi : position_offset + seq - 1, pos_mode, pos_rows);
    }
  }

  Int8EmbeddingArgs& a = call.args;
  a.ids = call.ids.const_data_ptr();
  a.ids_int64 = call.ids.scalar_type() == at::kLong;
  a.num_tokens = num_tokens;
  a.seq_len = seq;
  a.qweight = call.qweight.const_data_ptr<int8_t>();
  a.num_rows = rows;
  a.qweight_row_stride = call.qweight.stride(0);
  a.dim = dim;
  a.scales = call.scales.const_data_ptr();
  a.scales_kind = float_kind(call.scales.scalar_type());
  a.num_groups = call.scales.size(1);
  a.scales_row_stride = call.scales.stride(0);
  a.scale = static_cast<float>(scale);
  a.pos_mode = static_cast<int>(pos_mode);
  if (pos_mode == 1) {
    a.pos_weight = call.pos_weight.const_data_ptr();
    a.pos_kind = float_kind(call.pos_weight.scalar_type());
    a.pos_rows = pos_rows;
    a.pos_row_stride = call.pos_weight.stride(0);
  }
  a.positions = use_positions ? call.pos_ids.const_data_ptr() : nullptr;
  a.position_offset = position_offset;
  a.sinusoid_coef = pos_mode == 2 ? sinusoid_coef(sinusoid_base, dim) : 0.0f;
  a.out = call.out.mutable_data_ptr();
  a.out_kind = float_kind(out_dtype);
  return call;
}

namespace {

template <typename I>
void check_indices_cpu(const Int8Call& call) {
  const Int8EmbeddingArgs& a = call.args;
  const I* ids = static_cast<const I*>(a.ids);
  const int64_t k = cpu::find_first_outside<I>(ids, a.num_tokens, a.num_rows);
  if (k >= 0) int8_bad_id(static_cast<int64_t>(ids[k]), a.num_rows);
  if (a.positions != nullptr) {
    const I* pos = static_cast<const I*>(a.positions);
    const int64_t hi = a.pos_mode == 1 ? a.pos_rows : kInt8SinusoidMaxPosition;
    const int64_t kp = cpu::find_first_outside<I>(pos, a.num_tokens, hi);
    if (kp >= 0) int8_bad_position(static_cast<int64_t>(pos[kp]), a.pos_mode, a.pos_rows);
  }
}

at::Tensor int8_embedding_fwd_cpu(const at::Tensor& input_ids, const at::Tensor& qweight,
                                  const at::Tensor& scales, double scale,
                                  const std::optional<at::Tensor>& pos_weight,
                                  const std::optional<at::Tensor>& positions,
                                  int64_t position_offset, int64_t pos_mode,
                                  double sinusoid_base, at::ScalarType out_dtype) {
  Int8Call call = int8_prepare(input_ids, qweight, scales, scale, pos_weight, positions,
                               position_offset, pos_mode, sinusoid_base, out_dtype,
                               c10::DeviceType::CPU);
  if (call.empty) return call.out;
  // Validate every index before anything is written.
  if (call.args.ids_int64) {
    check_indices_cpu<int64_t>(call);
  } else {
    check_indices_cpu<int32_t>(call);
  }
  cpu::int8_embedding_fwd(call.args);
  return call.out;
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("int8_embedding_fwd", &fusedops::int8_embedding_fwd_cpu);
}
