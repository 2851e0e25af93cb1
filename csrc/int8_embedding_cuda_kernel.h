// Raw-pointer CUDA launcher of the INT8 embedding lookup (torch-free; the torch binding is
// int8_bindings_cuda.cpp). Arguments and per-element arithmetic: int8_math.h, shared with the
// CPU kernel. All pointers are device pointers. Ids and positions need not be validated: the
// kernel masks those out of range (ids whose row id - vocab_start is outside the table: zero
// token term; positions: zero positional term, int8_math.h) and never reads outside the tables.
#pragma once

#include <cuda_runtime_api.h>

#include "int8_math.h"

namespace fusedops {
namespace cuda {

// Enqueues the kernel on `stream`; returns the launch status (cudaGetLastError()). In sinusoid
// mode args.sinusoid_inv_freq must be a device buffer of ceil(D/2) floats (16-byte aligned for
// the vectorized kernel), which a first small kernel fills on the same stream.
cudaError_t int8_embedding_fwd(const Int8EmbeddingArgs& args, cudaStream_t stream);

// True when the 16-byte vectorized kernel applies (D and the group size multiples of 16,
// 16-byte aligned rows); otherwise the launcher uses the per-element kernel.
bool int8_embedding_vectorized(const Int8EmbeddingArgs& args);

}  // namespace cuda
}  // namespace fusedops
