// Torch bindings of fusedops::cpp_embedding_layernorm_fwd / _bwd (CPU): argument validation,
// index range checks and the calls of the raw-pointer kernels in embedding_layernorm_cpu.cpp (the
// schemas are in schemas.cpp).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "bindings_common.h"
#include "embedding_layernorm_cpu.h"

namespace fusedops {
namespace {

constexpr const char* kFwd = "fusedops::cpp_embedding_layernorm_fwd";
constexpr const char* kBwd = "fusedops::cpp_embedding_layernorm_bwd";
constexpr const char* kOp = "fused_embedding_layernorm";  // the public op named in index errors

using OptTensor = std::optional<at::Tensor>;

// The validated inputs of one call (tables share weight's dtype and D).
struct Inputs {
  const at::Tensor& ids;
  const at::Tensor& weight;
  const OptTensor& pos_weight;
  const OptTensor& positions;
  int64_t position_offset;
  const OptTensor& type_weight;
  const OptTensor& type_ids;
  const OptTensor& ln_weight;
  const OptTensor& ln_bias;
};

void check_param(const at::Tensor& t, const at::Tensor& weight, const char* op, const char* name,
                 int64_t dims, int64_t dim) {
  check_cpu(t, op, name);
  TORCH_CHECK_TYPE(t.scalar_type() == weight.scalar_type(), op, ": ", name, " dtype ",
                   t.scalar_type(), " must match weight dtype ", weight.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dims && t.size(-1) == dim, op, ": ", name, " must be ",
                    dims == 2 ? "[rows, D]" : "[D]", " with D=", dim, ", got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
                    " must have unit inner stride, got strides ", t.strides());
}

void check_index(const at::Tensor& t, const at::Tensor& ids, const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ids.scalar_type(), op, ": ", name, " dtype ",
                   t.scalar_type(), " must match input_ids dtype ", ids.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous() && t.numel() == ids.numel(), op, ": ", name,
                    " must be contiguous with one index per token (", ids.numel(), "), got shape ",
                    t.sizes());
}

// Shapes, dtypes and every index (ids, positions, type ids) in range.
void check_inputs(const Inputs& in, const char* op) {
  check_cpu(in.ids, op, "input_ids");
  TORCH_CHECK_TYPE(is_index_dtype(in.ids.scalar_type()), op,
                   ": input_ids must be int32 or int64, got ", in.ids.scalar_type());
  TORCH_CHECK_VALUE(in.ids.dim() >= 1 && in.ids.is_contiguous(), op,
                    ": input_ids must be contiguous [..., S], got shape ", in.ids.sizes());
  check_cpu(in.weight, op, "weight");
  TORCH_CHECK_TYPE(is_float_dtype(in.weight.scalar_type()), op,
                   ": weight must be float32/float16/bfloat16, got ", in.weight.scalar_type());
  TORCH_CHECK_VALUE(in.weight.dim() == 2, op, ": weight must be [V, D], got shape ",
                    in.weight.sizes());
  const int64_t dim = in.weight.size(1);
  check_param(in.weight, in.weight, op, "weight", 2, dim);
  if (in.pos_weight) check_param(*in.pos_weight, in.weight, op, "pos_weight", 2, dim);
  if (in.type_weight) check_param(*in.type_weight, in.weight, op, "type_weight", 2, dim);
  if (in.ln_weight) check_param(*in.ln_weight, in.weight, op, "ln_weight", 1, dim);
  if (in.ln_bias) check_param(*in.ln_bias, in.weight, op, "ln_bias", 1, dim);
  TORCH_CHECK_VALUE(!in.positions || in.pos_weight, op, ": positions given without pos_weight");
  TORCH_CHECK_VALUE(!in.type_ids || in.type_weight, op,
                    ": token_type_ids given without type_weight");
  if (in.positions) check_index(*in.positions, in.ids, op, "positions");
  if (in.type_ids) check_index(*in.type_ids, in.ids, op, "token_type_ids");
  const int64_t n = in.ids.numel();
  AT_DISPATCH_INDEX_TYPES(in.ids.scalar_type(), "cpp_embedding_layernorm_check", [&] {
    check_ids_cpu<index_t>(kOp, in.ids.const_data_ptr<index_t>(), n, in.weight.size(0));
    if (in.positions) {
      check_positions_cpu<index_t>(kOp, in.positions->const_data_ptr<index_t>(), n,
                                   PosMode::kLearned, in.pos_weight->size(0));
    }
    if (in.type_ids) {
      const index_t* tt = in.type_ids->const_data_ptr<index_t>();
      const int64_t rows = in.type_weight->size(0);
      const int64_t k = cpu::find_first_outside<index_t>(tt, n, rows);
      TORCH_CHECK_INDEX(k < 0, kOp, ": token_type_ids contains id ",
                        static_cast<int64_t>(k < 0 ? 0 : tt[k]), " outside [0, ", rows, ")");
    }
  });
  if (in.pos_weight && !in.positions && n > 0) {
    check_position_offset(kOp, in.position_offset, in.ids.size(-1), PosMode::kLearned,
                          in.pos_weight->size(0));
  }
  if (in.type_weight && !in.type_ids && n > 0) {
    TORCH_CHECK_INDEX(in.type_weight->size(0) > 0, kOp,
                      ": token type 0 (token_type_ids=None) outside [0, 0)");
  }
}

template <typename T>
const T* ptr_or_null(const OptTensor& t) {
  return t ? t->const_data_ptr<T>() : nullptr;
}

template <typename T, typename I>
cpu::EmbeddingLayerNormArgs<T, I> kernel_args(const Inputs& in, double eps) {
  cpu::EmbeddingLayerNormArgs<T, I> a;
  a.ids = in.ids.const_data_ptr<I>();
  a.num_tokens = in.ids.numel();
  a.seq_len = std::max<int64_t>(1, in.ids.size(-1));
  a.dim = in.weight.size(1);
  a.weight = in.weight.const_data_ptr<T>();
  a.weight_row_stride = in.weight.stride(0);
  a.pos_weight = ptr_or_null<T>(in.pos_weight);
  a.pos_row_stride = in.pos_weight ? in.pos_weight->stride(0) : 0;
  a.num_pos_rows = in.pos_weight ? in.pos_weight->size(0) : 0;
  a.positions = ptr_or_null<I>(in.positions);
  a.position_offset = in.position_offset;
  a.type_weight = ptr_or_null<T>(in.type_weight);
  a.type_row_stride = in.type_weight ? in.type_weight->stride(0) : 0;
  a.num_type_rows = in.type_weight ? in.type_weight->size(0) : 0;
  a.type_ids = ptr_or_null<I>(in.type_ids);
  a.ln_weight = ptr_or_null<T>(in.ln_weight);
  a.ln_bias = ptr_or_null<T>(in.ln_bias);
  a.eps = static_cast<float>(eps);
  return a;
}

void check_eps(double eps, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op,
                    ": eps must be a finite number >= 0, got ", eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> embedding_layernorm_fwd(
    const at::Tensor& input_ids, const at::Tensor& weight, const OptTensor& pos_weight,
    const OptTensor& positions, int64_t position_offset, const OptTensor& type_weight,
    const OptTensor& token_type_ids, const OptTensor& ln_weight, const OptTensor& ln_bias,
    double eps) {
  const Inputs in{input_ids, weight,          pos_weight, positions, position_offset,
                  type_weight, token_type_ids, ln_weight,  ln_bias};
  check_inputs(in, kFwd);
  check_eps(eps, kFwd);
  const int64_t dim = weight.size(1);
  at::Tensor out = at::empty(lookup_out_shape(input_ids, dim), weight.options());
  at::Tensor mean = at::empty(input_ids.sizes(), weight.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty(input_ids.sizes(), weight.options().dtype(at::kFloat));
  if (input_ids.numel() == 0 || dim == 0) return {out, mean, rstd};
  advise_huge_pages(out);
  FUSEDOPS_DISPATCH_FLOAT_TYPES(weight.scalar_type(), "cpp_embedding_layernorm_fwd", [&] {
    AT_DISPATCH_INDEX_TYPES(input_ids.scalar_type(), "cpp_embedding_layernorm_fwd_ids", [&] {
      cpu::embedding_layernorm_fwd(kernel_args<scalar_t, index_t>(in, eps),
                                   out.mutable_data_ptr<scalar_t>(),
                                   mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>());
    });
  });
  return {out, mean, rstd};
}

// Gradients (weight, pos_weight, type_weight, ln_weight, ln_bias); an empty [0] tensor where
// needs[i] is false or the term is absent.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> embedding_layernorm_bwd(
    const at::Tensor& grad_out, const at::Tensor& input_ids, const at::Tensor& weight,
    const OptTensor& pos_weight, const OptTensor& positions, int64_t position_offset,
    const OptTensor& type_weight, const OptTensor& token_type_ids, const OptTensor& ln_weight,
    const OptTensor& ln_bias, const at::Tensor& mean, const at::Tensor& rstd, int64_t padding_idx,
    at::IntArrayRef needs_mask) {
  const Inputs in{input_ids, weight,          pos_weight, positions, position_offset,
                  type_weight, token_type_ids, ln_weight,  ln_bias};
  // The forward validated these; the checks are what guarantees no out-of-bounds access here.
  check_inputs(in, kBwd);
  const int64_t dim = weight.size(1);
  const int64_t n = input_ids.numel();
  check_cpu(grad_out, kBwd, "grad_out");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == weight.scalar_type(), kBwd, ": grad_out dtype ",
                   grad_out.scalar_type(), " must match weight dtype ", weight.scalar_type());
  TORCH_CHECK_VALUE(grad_out.numel() == n * dim, kBwd, ": grad_out has ", grad_out.numel(),
                    " elements, expected ", n, " x ", dim);
  for (const at::Tensor* t : {&mean, &rstd}) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat && t->numel() == n && t->is_cpu(), kBwd,
                      ": mean and rstd must be float32 CPU tensors with one value per token");
  }
  TORCH_CHECK_VALUE(needs_mask.size() == 5, kBwd, ": needs must have 5 flags, got ",
                    needs_mask.size());
  TORCH_CHECK_VALUE(padding_idx >= -1 && padding_idx < weight.size(0), kBwd,
                    ": padding_idx must be -1 (none) or in [0, ", weight.size(0), "), got ",
                    padding_idx);
  const at::Tensor g = grad_out.contiguous();
  const at::Tensor mean_c = mean.contiguous();
  const at::Tensor rstd_c = rstd.contiguous();
  auto grad_like = [&](bool wanted, const at::Tensor* table) {
    if (!wanted || table == nullptr) return at::empty({0}, weight.options());
    return at::empty(table->sizes(), weight.options());
  };
  at::Tensor gw = grad_like(needs_mask[0] != 0, &weight);
  at::Tensor gp = grad_like(needs_mask[1] != 0, pos_weight ? &*pos_weight : nullptr);
  at::Tensor gt = grad_like(needs_mask[2] != 0, type_weight ? &*type_weight : nullptr);
  at::Tensor gg = grad_like(needs_mask[3] != 0, ln_weight ? &*ln_weight : nullptr);
  at::Tensor gb = grad_like(needs_mask[4] != 0, ln_bias ? &*ln_bias : nullptr);
  if (dim == 0) return {gw, gp, gt, gg, gb};
  advise_huge_pages(gw);
  FUSEDOPS_DISPATCH_FLOAT_TYPES(weight.scalar_type(), "cpp_embedding_layernorm_bwd", [&] {
    AT_DISPATCH_INDEX_TYPES(input_ids.scalar_type(), "cpp_embedding_layernorm_bwd_ids", [&] {
      auto out_ptr = [](at::Tensor& t) {
        return t.numel() ? t.mutable_data_ptr<scalar_t>() : nullptr;
      };
      cpu::EmbeddingLayerNormGrads<scalar_t> grads;
      grads.weight = out_ptr(gw);
      grads.num_rows = weight.size(0);
      grads.padding_idx = padding_idx;
      grads.pos_weight = out_ptr(gp);
      grads.pos_rows = pos_weight ? pos_weight->size(0) : 0;
      grads.type_weight = out_ptr(gt);
      grads.type_rows = type_weight ? type_weight->size(0) : 0;
      grads.ln_weight = out_ptr(gg);
      grads.ln_bias = out_ptr(gb);
      cpu::embedding_layernorm_bwd(kernel_args<scalar_t, index_t>(in, 0.0),
                                   g.const_data_ptr<scalar_t>(), mean_c.const_data_ptr<float>(),
                                   rstd_c.const_data_ptr<float>(), grads);
    });
  });
  return {gw, gp, gt, gg, gb};
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("cpp_embedding_layernorm_fwd", &fusedops::embedding_layernorm_fwd);
  m.impl("cpp_embedding_layernorm_bwd", &fusedops::embedding_layernorm_bwd);
}
