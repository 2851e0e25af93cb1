// Torch bindings of the C++ ops: schemas (the project's only TORCH_LIBRARY(fusedops); Python
// custom ops join the namespace through fragments), the CPU implementations that validate
// inputs and call the raw-pointer kernels, and the pybind11 module with build_info().
#include <torch/extension.h>
#include <torch/library.h>

#include <limits>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "embedding_cpu.h"
#include "fusedops_math.h"

namespace fusedops {
namespace {

constexpr const char* kFwd = "fusedops::cpp_embedding_fwd";
constexpr const char* kBwd = "fusedops::cpp_embedding_bwd";
// Sinusoid positions lie in [0, 2^16) on every backend (fusedops.ops.embedding).
constexpr int64_t kSinusoidMaxPosition = int64_t{1} << 16;

// The element types the kernels are instantiated for (AT_DISPATCH_FLOATING_TYPES adds double).
#define FUSEDOPS_DISPATCH_TABLE_TYPES(TYPE, NAME, ...)                \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                      \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

bool is_index_dtype(at::ScalarType t) { return t == at::kInt || t == at::kLong; }

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
                    t.device());
}

// A [rows, D] table whose rows are contiguous (any row stride).
void check_table(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D [rows, D], got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   " must be float32/float16/bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(1) <= 1 || t.stride(1) == 1, op, ": ", name,
                    " must have stride(1) == 1, got strides ", t.strides());
}

void check_index_tensor(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  TORCH_CHECK_TYPE(is_index_dtype(t.scalar_type()), op, ": ", name,
                   " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

template <typename I>
void check_ids(const at::Tensor& ids, int64_t rows) {
  const I* p = ids.const_data_ptr<I>();
  const int64_t k = cpu::find_first_outside<I>(p, ids.numel(), rows);
  TORCH_CHECK_INDEX(k < 0, "fused_embedding: input_ids contains id ", static_cast<int64_t>(k < 0 ? 0 : p[k]),
                    " outside [0, ", rows, ")");
}

template <typename I>
void check_positions(const at::Tensor& positions, int64_t pos_mode, int64_t pos_rows) {
  const I* p = positions.const_data_ptr<I>();
  const int64_t n = positions.numel();
  if (pos_mode == 1) {
    const int64_t k = cpu::find_first_outside<I>(p, n, pos_rows);
    TORCH_CHECK_INDEX(k < 0, "fused_embedding: position ", static_cast<int64_t>(k < 0 ? 0 : p[k]),
                      " outside the positional table [0, ", pos_rows, ")");
  } else {
    const int64_t k = cpu::find_first_outside<I>(p, n, kSinusoidMaxPosition);
    TORCH_CHECK_INDEX(k < 0, "fused_embedding: sinusoid position ",
                      static_cast<int64_t>(k < 0 ? 0 : p[k]), " outside [0, ",
                      kSinusoidMaxPosition, ")");
  }
}

// Positions offset + s for s in [0, S): report the first one outside the valid range.
void check_offset(int64_t offset, int64_t seq, int64_t pos_mode, int64_t pos_rows) {
  if (pos_mode == 1) {
    if (offset < 0 || offset >= pos_rows) {
      TORCH_CHECK_INDEX(false, "fused_embedding: position ", offset,
                        " outside the positional table [0, ", pos_rows, ")");
    }
    // offset + seq - 1 < pos_rows, written without overflow; first bad position is pos_rows.
    TORCH_CHECK_INDEX(seq - 1 < pos_rows - offset, "fused_embedding: position ", pos_rows,
                      " outside the positional table [0, ", pos_rows, ")");
  } else {
    // The same limit as the Triton kernels: there their angle reduction is exact.
    TORCH_CHECK_INDEX(offset >= 0 && offset < kSinusoidMaxPosition &&
                          seq - 1 < kSinusoidMaxPosition - offset,
                      "fused_embedding: sinusoid position ", offset < 0 ? offset : offset + seq - 1,
                      " (position_offset ", offset, ", sequence length ", seq, ") outside [0, ",
                      kSinusoidMaxPosition, ")");
  }
}

// A large result is normally fresh mmap'ed memory that nothing has touched yet. Asking for
// transparent huge pages before the first write lets the kernel fault 2 MiB pages instead of
// 4 KiB ones: for the [V, D] gradient table (154 MB for GPT-2) the 4 KiB page faults cost about
// as much as the writes themselves. Advisory only; failures (THP off, old kernel) are ignored.
void advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  if (end > begin) {
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)ptr;
  (void)bytes;
#endif
}

at::Tensor embedding_fwd(const at::Tensor& input_ids, const at::Tensor& weight, double scale,
                         const std::optional<at::Tensor>& pos_weight,
                         const std::optional<at::Tensor>& positions, int64_t position_offset,
                         int64_t pos_mode, double sinusoid_base) {
  check_index_tensor(input_ids, kFwd, "input_ids");
  TORCH_CHECK_VALUE(input_ids.dim() >= 1, kFwd, ": input_ids must have at least 1 dim, got ",
                    input_ids.dim());
  check_table(weight, kFwd, "weight");
  TORCH_CHECK_VALUE(pos_mode >= 0 && pos_mode <= 2, kFwd,
                    ": pos_mode must be 0 (none), 1 (learned) or 2 (sinusoid), got ", pos_mode);
  const int64_t rows = weight.size(0);
  const int64_t dim = weight.size(1);

  int64_t pos_rows = 0;
  if (pos_mode == 1) {
    TORCH_CHECK_VALUE(pos_weight.has_value(), kFwd, ": pos_mode 1 (learned) needs pos_weight");
    check_table(*pos_weight, kFwd, "pos_weight");
    TORCH_CHECK_TYPE(pos_weight->scalar_type() == weight.scalar_type(), kFwd,
                     ": pos_weight dtype ", pos_weight->scalar_type(),
                     " must match weight dtype ", weight.scalar_type());
    TORCH_CHECK_VALUE(pos_weight->size(1) == dim, kFwd, ": pos_weight has D=",
                      pos_weight->size(1), " but weight has D=", dim);
    pos_rows = pos_weight->size(0);
  }
  if (pos_mode == 2) {
    TORCH_CHECK_VALUE(std::isfinite(sinusoid_base) && sinusoid_base > 0.0, kFwd,
                      ": sinusoid_base must be a positive finite number, got ", sinusoid_base);
  }
  const bool use_positions = pos_mode != 0 && positions.has_value();
  at::Tensor ids = input_ids;
  at::Tensor pos_ids;
  if (use_positions) {
    check_index_tensor(*positions, kFwd, "positions");
    TORCH_CHECK_VALUE(positions->sizes() == input_ids.sizes(), kFwd, ": positions shape ",
                      positions->sizes(), " must equal input_ids shape ", input_ids.sizes());
    pos_ids = *positions;
    // One index type per kernel instantiation: widen the int32 side when they differ.
    if (pos_ids.scalar_type() != ids.scalar_type()) {
      ids = ids.to(at::kLong);
      pos_ids = pos_ids.to(at::kLong);
    }
  }

  std::vector<int64_t> out_shape(input_ids.sizes().begin(), input_ids.sizes().end());
  out_shape.push_back(dim);
  at::Tensor out = at::empty(out_shape, weight.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t num_tokens = input_ids.numel();
  if (num_tokens == 0 || dim == 0) return out;
  const int64_t seq = input_ids.size(-1);

  // Validate every index before anything is written.
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "cpp_embedding_fwd_check", [&] {
    check_ids<index_t>(ids, rows);
    if (use_positions) {
      check_positions<index_t>(pos_ids, pos_mode, pos_rows);
    }
  });
  if (pos_mode != 0 && !use_positions) check_offset(position_offset, seq, pos_mode, pos_rows);

  const float coef = pos_mode == 2 ? sinusoid_coef(sinusoid_base, dim) : 0.0f;
  FUSEDOPS_DISPATCH_TABLE_TYPES(weight.scalar_type(),
                                  "cpp_embedding_fwd", [&] {
    AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "cpp_embedding_fwd_ids", [&] {
      cpu::EmbeddingFwdArgs<scalar_t, index_t> args;
      args.ids = ids.const_data_ptr<index_t>();
      args.num_tokens = num_tokens;
      args.seq_len = seq;
      args.weight = weight.const_data_ptr<scalar_t>();
      args.num_rows = rows;
      args.weight_row_stride = weight.stride(0);
      args.dim = dim;
      args.scale = static_cast<float>(scale);
      args.pos_mode = static_cast<cpu::PosMode>(pos_mode);
      if (pos_mode == 1) {
        args.pos_weight = pos_weight->const_data_ptr<scalar_t>();
        args.pos_rows = pos_rows;
        args.pos_row_stride = pos_weight->stride(0);
      }
      args.positions = use_positions ? pos_ids.const_data_ptr<index_t>() : nullptr;
      args.position_offset = position_offset;
      args.sinusoid_coef = coef;
      args.out = out.mutable_data_ptr<scalar_t>();
      cpu::embedding_fwd(args);
    });
  });
  return out;
}

at::Tensor embedding_bwd(const at::Tensor& grad_out, const at::Tensor& indices, int64_t num_rows,
                         double scale, int64_t padding_idx) {
  check_cpu(grad_out, kBwd, "grad_out");
  check_index_tensor(indices, kBwd, "indices");
  TORCH_CHECK_TYPE(is_float_dtype(grad_out.scalar_type()), kBwd,
                   ": grad_out must be float32/float16/bfloat16, got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.dim() >= 1, kBwd, ": grad_out must be [..., D], got shape ",
                    grad_out.sizes());
  TORCH_CHECK_VALUE(num_rows >= 0, kBwd, ": num_rows must be >= 0, got ", num_rows);
  TORCH_CHECK_VALUE(padding_idx >= -1 && padding_idx < std::max<int64_t>(num_rows, 0), kBwd,
                    ": padding_idx must be -1 (none) or in [0, ", num_rows, "), got ",
                    padding_idx);
  const int64_t dim = grad_out.size(-1);
  const int64_t tokens = dim == 0 ? indices.numel() : grad_out.numel() / dim;
  TORCH_CHECK_VALUE(indices.numel() == tokens, kBwd, ": indices has ", indices.numel(),
                    " elements but grad_out has ", tokens, " rows of D=", dim);
  // The forward validated the ids; this check is what guarantees no out-of-bounds write.
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "cpp_embedding_bwd_check", [&] {
    const index_t* p = indices.const_data_ptr<index_t>();
    const int64_t k = cpu::find_first_outside<index_t>(p, indices.numel(), num_rows);
    TORCH_CHECK_INDEX(k < 0, "fused_embedding backward: indices contains id ",
                      static_cast<int64_t>(k < 0 ? 0 : p[k]), " outside [0, ", num_rows, ")");
  });

  at::Tensor g = grad_out.contiguous();
  at::Tensor grad_table = at::empty({num_rows, dim}, grad_out.options().memory_format(
                                                         at::MemoryFormat::Contiguous));
  if (num_rows == 0 || dim == 0) return grad_table;
  advise_huge_pages(grad_table.data_ptr(), grad_table.nbytes());
  FUSEDOPS_DISPATCH_TABLE_TYPES(g.scalar_type(),
                                  "cpp_embedding_bwd", [&] {
    AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "cpp_embedding_bwd_ids", [&] {
      cpu::EmbeddingBwdArgs<scalar_t, index_t> args;
      args.grad_out = g.const_data_ptr<scalar_t>();
      args.indices = indices.const_data_ptr<index_t>();
      args.num_tokens = tokens;
      args.dim = dim;
      args.num_rows = num_rows;
      args.scale = static_cast<float>(scale);
      args.padding_idx = padding_idx;
      args.grad_table = grad_table.mutable_data_ptr<scalar_t>();
      cpu::embedding_bwd(args);
    });
  });
  return grad_table;
}

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(FUSEDOPS_WITH_CUDA)
  info["with_cuda"] = true;
  {
    // FUSEDOPS_CUDA_ARCHS: the compute capabilities the CUDA kernels were built for, as
    // major * 10 + minor (setup.py, from TORCH_CUDA_ARCH_LIST); reported as "8.0", "9.0", ...
    pybind11::list archs;
    constexpr int kArchs[] = {FUSEDOPS_CUDA_ARCHS};
    for (int cc : kArchs) {
      if (cc > 0) archs.append(std::to_string(cc / 10) + "." + std::to_string(cc % 10));
    }
    info["cuda_arch_list"] = archs;
  }
#else
  info["with_cuda"] = false;
  info["cuda_arch_list"] = pybind11::list();
#endif
#if defined(_OPENMP)
  info["openmp"] = true;
  info["openmp_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_threads"] = 1;
#endif
  info["torch_threads"] = at::get_num_threads();
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  info["compiler"] = std::string("unknown");
#endif
  info["cplusplus"] = static_cast<long>(__cplusplus);
#if defined(__aarch64__)
  info["arch"] = "aarch64";
#elif defined(__x86_64__)
  info["arch"] = "x86_64";
#else
  info["arch"] = "other";
#endif
#if defined(__SSE2__)
  info["streaming_stores"] = true;
#else
  info["streaming_stores"] = false;
#endif
  return info;
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY(fusedops, m) {
  // Fake (meta) implementations of these ops live in Python, in this module.
  m.set_python_module("fusedops.ops.cpp_fakes");
  m.def(
      "cpp_embedding_fwd(Tensor input_ids, Tensor weight, float scale, Tensor? pos_weight, "
      "Tensor? positions, int position_offset, int pos_mode, float sinusoid_base) -> Tensor");
  m.def(
      "cpp_embedding_bwd(Tensor grad_out, Tensor indices, int num_rows, float scale, "
      "int padding_idx) -> Tensor");
  // INT8 embedding (inference): CPU impl in int8_bindings.cpp, CUDA impl in
  // int8_bindings_cuda.cpp (CUDA builds only).
  m.def(
      "int8_embedding_fwd(Tensor input_ids, Tensor qweight, Tensor scales, float scale, "
      "Tensor? pos_weight, Tensor? positions, int position_offset, int pos_mode, "
      "float sinusoid_base, ScalarType out_dtype) -> Tensor");
  // Rotary position embedding of q and k (one pass, writes out_q/out_k; out_q may be q):
  // CPU impl in rope_bindings.cpp. cos/sin are read at element (batch, row, col) through the
  // given element strides, so views of a cache need no copy.
  m.def(
      "cpp_rope(Tensor q, Tensor? k, Tensor cos, Tensor sin, int[] cos_strides, "
      "int[] sin_strides, Tensor? positions, int position_offset, bool cache, bool interleaved, "
      "int rotary_dim, bool backward, Tensor(a!) out_q, Tensor(b!)? out_k) -> ()");
}

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("cpp_embedding_fwd", &fusedops::embedding_fwd);
  m.impl("cpp_embedding_bwd", &fusedops::embedding_bwd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedops C++ kernels (the ops register under torch.ops.fusedops)";
  m.def("build_info", &fusedops::build_info,
        "Build configuration: with_cuda, cuda_arch_list, openmp_threads, compiler, ...");
}
