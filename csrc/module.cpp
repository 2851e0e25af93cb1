// The Python module fusedops._C: build_info(), the lookup constants of lookup_constants.h (the
// values python/fusedops/constants.py must equal), and a test hook of the INT8 kernel's masking.
// Loading it registers the ops (schemas.cpp) and their kernels under torch.ops.fusedops.
#include <torch/extension.h>

#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "int8_bindings.h"
#include "lookup_constants.h"

namespace fusedops {
namespace {

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedops C++ kernels (the ops register under torch.ops.fusedops)";
  m.def("build_info", &fusedops::build_info,
        "Build configuration: with_cuda, cuda_arch_list, openmp_threads, compiler, ...");
  m.attr("POS_NONE") = static_cast<int>(fusedops::PosMode::kNone);
  m.attr("POS_LEARNED") = static_cast<int>(fusedops::PosMode::kLearned);
  m.attr("POS_SINUSOID") = static_cast<int>(fusedops::PosMode::kSinusoid);
  m.attr("SINUSOID_MAX_POSITION") = fusedops::kSinusoidMaxPosition;
  m.def("_int8_embedding_fwd_masked_cpu", &fusedops::int8_embedding_fwd_masked_cpu,
        "Test hook: the CPU INT8 kernel without the index checks, so out-of-range ids and "
        "positions take the masking path of int8_math.h (the one the CUDA kernel runs with "
        "check_indices=False). Same arguments as torch.ops.fusedops.int8_embedding_fwd, CPU "
        "tensors only.");
}
