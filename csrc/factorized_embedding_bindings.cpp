// Torch bindings of fusedops::cpp_factorized_embedding_fwd / cpp_factorized_embedding_bwd (CPU):
// argument validation and the calls of the raw-pointer kernels in factorized_embedding_cpu.cpp
// (the schemas are in schemas.cpp, the fakes in python/fusedops/ops/cpp_fakes.py).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "bindings_common.h"
#include "factorized_embedding_cpu.h"
#include "lookup_constants.h"

namespace fusedops {
namespace {

constexpr const char* kFwd = "fusedops::cpp_factorized_embedding_fwd";
constexpr const char* kBwd = "fusedops::cpp_factorized_embedding_bwd";
constexpr const char* kOp = "factorized_embedding";  // the public op named in index errors

// A 2-D float matrix with contiguous rows (any row stride), in `dtype` unless that is Undefined.
void check_matrix(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype) {
  check_float_matrix(t, op, name, "");
  TORCH_CHECK_TYPE(dtype == at::ScalarType::Undefined || t.scalar_type() == dtype, op, ": ", name,
                   " dtype ", t.scalar_type(), " must match a's dtype ", dtype);
  check_unit_inner_stride(t, op, name);
}

// a [V, r] and b [r, D] in one dtype.
void check_factors(const at::Tensor& a, const at::Tensor& b, const char* op) {
  check_matrix(a, op, "a", at::ScalarType::Undefined);
  check_matrix(b, op, "b", a.scalar_type());
  TORCH_CHECK_VALUE(b.size(0) == a.size(1), op, ": b must be [r, D] with r = ", a.size(1),
                    " (a is ", a.sizes(), "), got shape ", b.sizes());
}

// hot_slots: [V] int32, contiguous, every value in [-1, num_hot).
void check_hot_slots(const at::Tensor& s, const char* op, int64_t rows, int64_t num_hot) {
  check_cpu(s, op, "hot_slots");
  TORCH_CHECK_TYPE(s.scalar_type() == at::kInt, op, ": hot_slots must be int32, got ",
                   s.scalar_type());
  TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == rows, op, ": hot_slots must be [", rows,
                    "] (one slot per row of a), got shape ", s.sizes());
  TORCH_CHECK_VALUE(s.is_contiguous(), op, ": hot_slots must be contiguous");
  const int32_t* p = s.const_data_ptr<int32_t>();
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t v = static_cast<int64_t>(p[t]);
    TORCH_CHECK_INDEX(v >= -1 && v < num_hot, kOp, ": hot_slots contains slot ", v,
                      " outside [-1, ", num_hot, ")");
  }
}

at::Tensor factorized_fwd(const at::Tensor& input_ids, const at::Tensor& a, const at::Tensor& b,
                          const std::optional<at::Tensor>& hot_slots,
                          const std::optional<at::Tensor>& hot_rows, double scale,
                          const std::optional<at::Tensor>& pos_weight,
                          const std::optional<at::Tensor>& positions, int64_t position_offset,
                          int64_t pos_mode_code, double sinusoid_base) {
  check_input_ids(input_ids, kFwd);
  check_factors(a, b, kFwd);
  const int64_t rows = a.size(0);
  const int64_t dim = b.size(1);
  TORCH_CHECK_VALUE(hot_slots.has_value() == hot_rows.has_value(), kFwd,
                    ": hot_slots and hot_rows must be given together");
  int64_t num_hot = 0;
  if (hot_rows.has_value()) {
    check_matrix(*hot_rows, kFwd, "hot_rows", a.scalar_type());
    TORCH_CHECK_VALUE(hot_rows->size(1) == dim, kFwd, ": hot_rows must be [K, ", dim,
                      "] to match b, got shape ", hot_rows->sizes());
    num_hot = hot_rows->size(0);
    check_hot_slots(*hot_slots, kFwd, rows, num_hot);
  }
  const PosMode pos_mode = pos_mode_arg(pos_mode_code, kFwd);
  if (pos_mode == PosMode::kLearned) {
    const at::Tensor& table = learned_table(pos_weight, kFwd);
    check_matrix(table, kFwd, "pos_weight", a.scalar_type());
    TORCH_CHECK_VALUE(table.size(1) == dim, kFwd, ": pos_weight has D=", table.size(1),
                      " but b has D=", dim);
  }
  const LookupPositions lp = lookup_positions(kFwd, input_ids, pos_mode, pos_weight, positions,
                                              position_offset, sinusoid_base);

  at::Tensor out = at::empty(lookup_out_shape(input_ids, dim),
                             a.options().memory_format(at::MemoryFormat::Contiguous));
  if (input_ids.numel() == 0 || dim == 0) return out;
  // Validate every index before anything is written.
  check_lookup_indices(kOp, lp, rows);

  advise_huge_pages(out);
  FUSEDOPS_DISPATCH_FLOAT_TYPES(a.scalar_type(), "cpp_factorized_embedding_fwd", [&] {
    AT_DISPATCH_INDEX_TYPES(lp.ids.scalar_type(), "cpp_factorized_embedding_fwd_ids", [&] {
      cpu::FactorizedFwdArgs<scalar_t, index_t> args;
      set_lookup_args(args, lp, scale, out);
      args.a = a.const_data_ptr<scalar_t>();
      args.num_rows = rows;
      args.a_row_stride = a.stride(0);
      args.rank = a.size(1);
      args.b = b.const_data_ptr<scalar_t>();
      args.b_row_stride = b.stride(0);
      if (num_hot > 0) {
        args.hot_slots = hot_slots->const_data_ptr<int32_t>();
        args.hot_rows = hot_rows->const_data_ptr<scalar_t>();
        args.num_hot = num_hot;
        args.hot_row_stride = hot_rows->stride(0);
      }
      cpu::factorized_fwd(args);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> factorized_bwd(
    const at::Tensor& grad_out, const at::Tensor& input_ids, const at::Tensor& a,
    const at::Tensor& b, const std::optional<at::Tensor>& hot_slots, int64_t num_hot,
    double scale, int64_t padding_idx, at::IntArrayRef needs) {
  check_index_tensor(input_ids, kBwd, "input_ids");
  check_factors(a, b, kBwd);
  const int64_t rows = a.size(0);
  const int64_t rank = a.size(1);
  const int64_t dim = b.size(1);
  check_cpu(grad_out, kBwd, "grad_out");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == a.scalar_type(), kBwd, ": grad_out dtype ",
                   grad_out.scalar_type(), " must match a's dtype ", a.scalar_type());
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(lookup_out_shape(input_ids, dim)), kBwd,
                    ": grad_out must be [*input_ids.shape, D] = ",
                    lookup_out_shape(input_ids, dim), ", got shape ", grad_out.sizes());
  TORCH_CHECK_VALUE(needs.size() == 3, kBwd, ": needs must have 3 flags (a, b, hot_rows), got ",
                    needs.size());
  TORCH_CHECK_VALUE(num_hot >= 0, kBwd, ": num_hot must be >= 0, got ", num_hot);
  if (hot_slots.has_value()) check_hot_slots(*hot_slots, kBwd, rows, num_hot);
  TORCH_CHECK_VALUE(padding_idx >= -1 && padding_idx < rows, kBwd,
                    ": padding_idx must be -1 (none) or in [0, ", rows, "), got ", padding_idx);
  const int64_t num_tokens = input_ids.numel();
  // The forward validated the ids; this check is what guarantees no out-of-bounds access.
  AT_DISPATCH_INDEX_TYPES(input_ids.scalar_type(), "cpp_factorized_embedding_bwd_check", [&] {
    const index_t* p = input_ids.const_data_ptr<index_t>();
    const int64_t k = cpu::find_first_outside<index_t>(p, num_tokens, rows);
    TORCH_CHECK_INDEX(k < 0, kOp, " backward: input_ids contains id ",
                      static_cast<int64_t>(k < 0 ? 0 : p[k]), " outside [0, ", rows, ")");
  });

  const auto options = a.options().memory_format(at::MemoryFormat::Contiguous);
  auto make = [&](bool need, at::IntArrayRef shape) {
    return need ? at::empty(shape, options) : at::empty({0}, options);
  };
  at::Tensor grad_a = make(needs[0] != 0, {rows, rank});
  at::Tensor grad_b = make(needs[1] != 0, {rank, dim});
  at::Tensor grad_hot = make(needs[2] != 0, {num_hot, dim});
  if (needs[0] == 0 && needs[1] == 0 && needs[2] == 0) return {grad_a, grad_b, grad_hot};
  advise_huge_pages(grad_a);
  const at::Tensor g = grad_out.contiguous();

  FUSEDOPS_DISPATCH_FLOAT_TYPES(a.scalar_type(), "cpp_factorized_embedding_bwd", [&] {
    AT_DISPATCH_INDEX_TYPES(input_ids.scalar_type(), "cpp_factorized_embedding_bwd_ids", [&] {
      cpu::FactorizedBwdArgs<scalar_t, index_t> args;
      args.grad_out = g.const_data_ptr<scalar_t>();
      args.ids = input_ids.const_data_ptr<index_t>();
      args.num_tokens = num_tokens;
      args.a = a.const_data_ptr<scalar_t>();
      args.num_rows = rows;
      args.a_row_stride = a.stride(0);
      args.rank = rank;
      args.b = b.const_data_ptr<scalar_t>();
      args.b_row_stride = b.stride(0);
      args.dim = dim;
      if (hot_slots.has_value()) args.hot_slots = hot_slots->const_data_ptr<int32_t>();
      args.num_hot = num_hot;
      args.scale = static_cast<float>(scale);
      args.padding_idx = padding_idx;
      args.grad_a = needs[0] != 0 ? grad_a.mutable_data_ptr<scalar_t>() : nullptr;
      args.grad_b = needs[1] != 0 ? grad_b.mutable_data_ptr<scalar_t>() : nullptr;
      args.grad_hot = needs[2] != 0 ? grad_hot.mutable_data_ptr<scalar_t>() : nullptr;
      cpu::factorized_bwd(args);
    });
  });
  return {grad_a, grad_b, grad_hot};
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("cpp_factorized_embedding_fwd", &fusedops::factorized_fwd);
  m.impl("cpp_factorized_embedding_bwd", &fusedops::factorized_bwd);
}
