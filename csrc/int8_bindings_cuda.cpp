// CUDA implementation of fusedops::int8_embedding_fwd (compiled only in CUDA builds: setup.py
// adds this file and the .cu kernel when it builds a CUDAExtension). Host code only: validation
// and output allocation are shared with the CPU impl (int8_bindings.cpp); the kernel is the
// raw-pointer launcher of int8_embedding_cuda_kernel.cu, enqueued on the current stream.
//
// check_indices=True: ids and positions are range-checked on the device and the first bad value
// is read back (a device sync) to raise the CPU op's IndexError. check_indices=False: nothing on
// the device is read by the host (no sync, so the call can be captured in a CUDA graph); the
// kernel masks out-of-range ids and positions (int8_math.h). With vocab_start the table is a
// vocabulary shard: only positions are checked, and the kernel masks the other shards' ids.
// The Python op (fusedops.int8_embedding) passes check_indices=False while the current stream is
// capturing a CUDA graph (ops/_common.py host_index_checks): a capture may not sync.
//
// Sinusoid mode: a ceil(D/2) fp32 buffer from the caching allocator (capturable) receives the
// per-pair inv_freq, which the launcher computes on the stream before the lookup.
//
// Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in cusparse/cublas headers that a plain
// toolkit may lack, and is not needed for a stream and a device guard.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "bindings_common.h"
#include "int8_bindings.h"
#include "int8_embedding_cuda_kernel.h"

namespace fusedops {
namespace {

// The first value of v outside [0, hi), or -1 when all are inside. One device reduction and a
// host sync (the error names the value, like the CPU op).
int64_t first_outside_cuda(const at::Tensor& v, int64_t hi, int64_t* value) {
  const at::Tensor bad = v.lt(0).logical_or_(v.ge(hi)).reshape({-1});
  if (!bad.any().item<bool>()) return -1;
  const int64_t k = bad.nonzero().select(1, 0).select(0, 0).item<int64_t>();
  *value = v.reshape({-1}).select(0, k).item<int64_t>();
  return k;
}

// Ids against the table (unless it is a vocabulary shard: check_ids false) and positions.
void check_indices_cuda(const Int8Call& call, bool check_ids) {
  const Int8EmbeddingArgs& a = call.args;
  int64_t value = 0;
  if (check_ids && first_outside_cuda(call.ids, a.num_rows, &value) >= 0) {
    bad_id(kInt8Op, value, a.num_rows);
  }
  if (a.positions != nullptr &&
      first_outside_cuda(call.pos_ids, int8_position_limit(a), &value) >= 0) {
    bad_position(kInt8Op, value, a.pos_mode, a.pos_rows);
  }
}

at::Tensor int8_embedding_fwd_cuda(const at::Tensor& input_ids, const at::Tensor& qweight,
                                   const at::Tensor& scales, double scale,
                                   const std::optional<at::Tensor>& pos_weight,
                                   const std::optional<at::Tensor>& positions,
                                   int64_t position_offset, int64_t pos_mode,
                                   double sinusoid_base, at::ScalarType out_dtype,
                                   bool check_indices, std::optional<int64_t> vocab_start) {
  const c10::cuda::CUDAGuard guard(input_ids.device());
  Int8Call call = int8_prepare(input_ids, qweight, scales, scale, pos_weight, positions,
                               position_offset, pos_mode, sinusoid_base, out_dtype,
                               c10::DeviceType::CUDA, vocab_start);
  if (call.empty) return call.out;
  if (check_indices) check_indices_cuda(call, !vocab_start.has_value());
  if (call.args.pos_mode == PosMode::kSinusoid) {
    call.sinusoid_inv_freq =
        at::empty({(call.args.dim + 1) / 2}, input_ids.options().dtype(at::kFloat));
    call.args.sinusoid_inv_freq = call.sinusoid_inv_freq.mutable_data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input_ids.device().index()).stream();
  const cudaError_t err = cuda::int8_embedding_fwd(call.args, stream);
  TORCH_CHECK(err == cudaSuccess, kInt8Op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(err));
  return call.out;
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CUDA, m) {
  m.impl("int8_embedding_fwd", &fusedops::int8_embedding_fwd_cuda);
}
