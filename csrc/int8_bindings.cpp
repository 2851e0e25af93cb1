// Torch bindings of fusedops::int8_embedding_fwd: argument validation shared with the CUDA impl,
// and the CPU implementation (the schema is in schemas.cpp). The CPU op range-checks every id and
// position whatever check_indices says: on CPU the check is one cheap pass and needs no sync. With
// vocab_start (a vocabulary shard) it checks the positions only: the kernel masks the ids of
// other shards, and the caller checks them against the whole vocabulary.
#include "int8_bindings.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "bindings_common.h"
#include "int8_embedding_cpu.h"

namespace fusedops {
namespace {

void check_device(const at::Tensor& t, c10::DeviceType device_type, const at::Tensor& ref,
                  const char* name) {
  TORCH_CHECK_VALUE(t.device().type() == device_type && t.device() == ref.device(), kInt8Op,
                    ": ", name, " must be on ", ref.device(), " like input_ids, got ",
                    t.device());
}

}  // namespace

Int8Call int8_prepare(const at::Tensor& input_ids, const at::Tensor& qweight,
                      const at::Tensor& scales, double scale,
                      const std::optional<at::Tensor>& pos_weight,
                      const std::optional<at::Tensor>& positions, int64_t position_offset,
                      int64_t pos_mode_code, double sinusoid_base, at::ScalarType out_dtype,
                      c10::DeviceType device_type, std::optional<int64_t> vocab_start) {
  const char* op = kInt8Op;
  TORCH_CHECK_VALUE(input_ids.device().type() == device_type, op,
                    ": input_ids must be on the device of this kernel (", device_type, "), got ",
                    input_ids.device());
  TORCH_CHECK_TYPE(is_index_dtype(input_ids.scalar_type()), op,
                   ": input_ids must be int32 or int64, got ", input_ids.scalar_type());
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
  // G = 0 only for D = 0 (quantize_embedding of an empty row with a group_size).
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == rows &&
                        ((scales.size(1) >= 1 && dim % scales.size(1) == 0) ||
                         (dim == 0 && scales.size(1) == 0)),
                    op, ": scales must be [V, G] with V = ", rows, " and G >= 1 dividing D = ",
                    dim, ", got shape ", scales.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(out_dtype), op,
                   ": out_dtype must be float32/float16/bfloat16, got ", out_dtype);
  const PosMode pos_mode = pos_mode_arg(pos_mode_code, op);
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(!vocab_start.has_value() || *vocab_start >= 0, op,
                    ": vocab_start must be >= 0, got ", vocab_start.value_or(0));

  Int8Call call;
  call.qweight = unit_inner_stride(qweight);
  call.scales = unit_inner_stride(scales);
  int64_t pos_rows = 0;
  if (pos_mode == PosMode::kLearned) {
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
  if (pos_mode == PosMode::kSinusoid) check_sinusoid_base(sinusoid_base, op);
  const bool use_positions = pos_mode != PosMode::kNone && positions.has_value();
  call.ids = input_ids.contiguous();
  if (use_positions) {
    check_device(*positions, device_type, input_ids, "positions");
    TORCH_CHECK_TYPE(is_index_dtype(positions->scalar_type()), op,
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

  call.out = at::empty(lookup_out_shape(input_ids, dim), input_ids.options().dtype(out_dtype));
  const int64_t num_tokens = input_ids.numel();
  const int64_t seq = input_ids.size(-1);
  call.empty = num_tokens == 0 || dim == 0;
  if (!call.empty && pos_mode != PosMode::kNone && !use_positions) {
    check_position_offset(op, position_offset, seq, pos_mode, pos_rows);
  }

  Int8EmbeddingArgs& a = call.args;
  a.ids = call.ids.const_data_ptr();
  a.ids_int64 = call.ids.scalar_type() == at::kLong;
  a.num_tokens = num_tokens;
  a.seq_len = seq;
  a.qweight = call.qweight.const_data_ptr<int8_t>();
  a.num_rows = rows;
  a.vocab_start = vocab_start.value_or(0);
  a.qweight_row_stride = call.qweight.stride(0);
  a.dim = dim;
  a.scales = call.scales.const_data_ptr();
  a.scales_kind = float_kind(call.scales.scalar_type());
  a.num_groups = call.scales.size(1);
  a.scales_row_stride = call.scales.stride(0);
  a.scale = static_cast<float>(scale);
  a.pos_mode = pos_mode;
  if (pos_mode == PosMode::kLearned) {
    a.pos_weight = call.pos_weight.const_data_ptr();
    a.pos_kind = float_kind(call.pos_weight.scalar_type());
    a.pos_rows = pos_rows;
    a.pos_row_stride = call.pos_weight.stride(0);
  }
  a.positions = use_positions ? call.pos_ids.const_data_ptr() : nullptr;
  a.position_offset = position_offset;
  a.sinusoid_coef = pos_mode == PosMode::kSinusoid ? sinusoid_coef(sinusoid_base, dim) : 0.0f;
  a.out = call.out.mutable_data_ptr();
  a.out_kind = float_kind(out_dtype);
  return call;
}

at::Tensor int8_embedding_fwd_masked_cpu(const at::Tensor& input_ids, const at::Tensor& qweight,
                                         const at::Tensor& scales, double scale,
                                         const std::optional<at::Tensor>& pos_weight,
                                         const std::optional<at::Tensor>& positions,
                                         int64_t position_offset, int64_t pos_mode,
                                         double sinusoid_base, at::ScalarType out_dtype) {
  Int8Call call = int8_prepare(input_ids, qweight, scales, scale, pos_weight, positions,
                               position_offset, pos_mode, sinusoid_base, out_dtype,
                               c10::DeviceType::CPU, std::nullopt);
  if (!call.empty) cpu::int8_embedding_fwd(call.args);
  return call.out;
}

namespace {

// Ids against the table (unless it is a vocabulary shard: check_ids false) and positions.
template <typename I>
void check_indices_cpu(const Int8EmbeddingArgs& a, bool check_ids) {
  if (check_ids) check_ids_cpu<I>(kInt8Op, static_cast<const I*>(a.ids), a.num_tokens, a.num_rows);
  if (a.positions != nullptr) {
    check_positions_cpu<I>(kInt8Op, static_cast<const I*>(a.positions), a.num_tokens,
                           a.pos_mode, a.pos_rows);
  }
}

at::Tensor int8_embedding_fwd_cpu(const at::Tensor& input_ids, const at::Tensor& qweight,
                                  const at::Tensor& scales, double scale,
                                  const std::optional<at::Tensor>& pos_weight,
                                  const std::optional<at::Tensor>& positions,
                                  int64_t position_offset, int64_t pos_mode,
                                  double sinusoid_base, at::ScalarType out_dtype,
                                  bool /*check_indices: the CPU op always checks*/,
                                  std::optional<int64_t> vocab_start) {
  Int8Call call = int8_prepare(input_ids, qweight, scales, scale, pos_weight, positions,
                               position_offset, pos_mode, sinusoid_base, out_dtype,
                               c10::DeviceType::CPU, vocab_start);
  if (call.empty) return call.out;
  // Validate every index before anything is written.
  const bool check_ids = !vocab_start.has_value();
  if (call.args.ids_int64) {
    check_indices_cpu<int64_t>(call.args, check_ids);
  } else {
    check_indices_cpu<int32_t>(call.args, check_ids);
  }
  advise_huge_pages(call.out);
  cpu::int8_embedding_fwd(call.args);
  return call.out;
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("int8_embedding_fwd", &fusedops::int8_embedding_fwd_cpu);
}
