// Torch bindings of fusedops::cpp_embedding_fwd / cpp_embedding_bwd (CPU): argument validation and
// the calls of the raw-pointer kernels in embedding_cpu.cpp (the schemas are in schemas.cpp).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "bindings_common.h"
#include "embedding_cpu.h"
#include "lookup_constants.h"

namespace fusedops {
namespace {

constexpr const char* kFwd = "fusedops::cpp_embedding_fwd";
constexpr const char* kBwd = "fusedops::cpp_embedding_bwd";
constexpr const char* kOp = "fused_embedding";  // the public op named in index errors

// A [rows, D] table whose rows are contiguous (any row stride).
void check_table(const at::Tensor& t, const char* op, const char* name) {
  check_float_matrix(t, op, name, " [rows, D]");
  check_unit_inner_stride(t, op, name);
}

at::Tensor embedding_fwd(const at::Tensor& input_ids, const at::Tensor& weight, double scale,
                         const std::optional<at::Tensor>& pos_weight,
                         const std::optional<at::Tensor>& positions, int64_t position_offset,
                         int64_t pos_mode_code, double sinusoid_base,
                         std::optional<int64_t> vocab_start) {
  check_input_ids(input_ids, kFwd);
  check_table(weight, kFwd, "weight");
  const PosMode pos_mode = pos_mode_arg(pos_mode_code, kFwd);
  const int64_t rows = weight.size(0);
  const int64_t dim = weight.size(1);
  TORCH_CHECK_VALUE(!vocab_start.has_value() || *vocab_start >= 0, kFwd,
                    ": vocab_start must be >= 0, got ", vocab_start.value_or(0));
  if (pos_mode == PosMode::kLearned) {
    const at::Tensor& table = learned_table(pos_weight, kFwd);
    check_table(table, kFwd, "pos_weight");
    TORCH_CHECK_TYPE(table.scalar_type() == weight.scalar_type(), kFwd, ": pos_weight dtype ",
                     table.scalar_type(), " must match weight dtype ", weight.scalar_type());
    TORCH_CHECK_VALUE(table.size(1) == dim, kFwd, ": pos_weight has D=", table.size(1),
                      " but weight has D=", dim);
  }
  const LookupPositions lp = lookup_positions(kFwd, input_ids, pos_mode, pos_weight, positions,
                                              position_offset, sinusoid_base);

  at::Tensor out = at::empty(lookup_out_shape(input_ids, dim),
                             weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (input_ids.numel() == 0 || dim == 0) return out;
  // Validate every index before anything is written. With vocab_start the table is a shard:
  // the caller checked the ids against the whole vocabulary and the kernel masks the others.
  check_lookup_indices(kOp, lp, vocab_start.has_value() ? std::nullopt : std::optional(rows));

  advise_huge_pages(out);
  FUSEDOPS_DISPATCH_FLOAT_TYPES(weight.scalar_type(), "cpp_embedding_fwd", [&] {
    AT_DISPATCH_INDEX_TYPES(lp.ids.scalar_type(), "cpp_embedding_fwd_ids", [&] {
      cpu::EmbeddingFwdArgs<scalar_t, index_t> args;
      set_lookup_args(args, lp, scale, out);
      args.weight = weight.const_data_ptr<scalar_t>();
      args.num_rows = rows;
      args.vocab_start = vocab_start.value_or(0);
      args.weight_row_stride = weight.stride(0);
      cpu::embedding_fwd(args);
    });
  });
  return out;
}

at::Tensor embedding_bwd(const at::Tensor& grad_out, const at::Tensor& indices, int64_t num_rows,
                         double scale, int64_t padding_idx, int64_t vocab_start) {
  check_cpu(grad_out, kBwd, "grad_out");
  check_index_tensor(indices, kBwd, "indices");
  TORCH_CHECK_TYPE(is_float_dtype(grad_out.scalar_type()), kBwd,
                   ": grad_out must be float32/float16/bfloat16, got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.dim() >= 1, kBwd, ": grad_out must be [..., D], got shape ",
                    grad_out.sizes());
  TORCH_CHECK_VALUE(num_rows >= 0, kBwd, ": num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK_VALUE(vocab_start >= 0, kBwd, ": vocab_start must be >= 0, got ", vocab_start);
  TORCH_CHECK_VALUE(padding_idx >= -1 && padding_idx < std::max<int64_t>(num_rows, 0), kBwd,
                    ": padding_idx must be -1 (none) or in [0, ", num_rows, "), got ",
                    padding_idx);
  const int64_t dim = grad_out.size(-1);
  const int64_t tokens = dim == 0 ? indices.numel() : grad_out.numel() / dim;
  TORCH_CHECK_VALUE(indices.numel() == tokens, kBwd, ": indices has ", indices.numel(),
                    " elements but grad_out has ", tokens, " rows of D=", dim);
  // Indices outside [vocab_start, vocab_start + num_rows) are skipped by the kernel (another
  // shard's ids, or positions of a table gradient taken over a subset): never an error, and
  // nothing is written outside grad_table.
  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_table = at::empty({num_rows, dim}, grad_out.options().memory_format(
                                                         at::MemoryFormat::Contiguous));
  if (num_rows == 0 || dim == 0) return grad_table;
  advise_huge_pages(grad_table);
  FUSEDOPS_DISPATCH_FLOAT_TYPES(g.scalar_type(), "cpp_embedding_bwd", [&] {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "cpp_embedding_bwd_ids", [&] {
      cpu::EmbeddingBwdArgs<scalar_t, index_t> args;
      args.grad_out = g.const_data_ptr<scalar_t>();
      args.indices = indices.const_data_ptr<index_t>();
      args.num_tokens = tokens;
      args.dim = dim;
      args.num_rows = num_rows;
      args.vocab_start = vocab_start;
      args.scale = static_cast<float>(scale);
      args.padding_idx = padding_idx;
      args.grad_table = grad_table.mutable_data_ptr<scalar_t>();
      cpu::embedding_bwd(args);
    });
  });
  return grad_table;
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("cpp_embedding_fwd", &fusedops::embedding_fwd);
  m.impl("cpp_embedding_bwd", &fusedops::embedding_bwd);
}
