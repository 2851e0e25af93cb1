// Raw-pointer CPU kernel of the INT8 embedding lookup (no at::Tensor here; int8_bindings.cpp
// validates the inputs and wraps it). Arguments and per-element arithmetic: int8_math.h.
#pragma once

#include "int8_math.h"

namespace fusedops {
namespace cpu {

// out[n, :] = cast(dequant(qweight[ids[n] - vocab_start, :]) * scale + P[pos(n), :]) for every
// token n. Ids and positions out of range are masked as int8_math.h says, never read (the op's
// binding rejects them before the call, except the ids of other shards when vocab_start is set).
void int8_embedding_fwd(const Int8EmbeddingArgs& args);

}  // namespace cpu
}  // namespace fusedops
