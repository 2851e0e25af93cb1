// Token schedules shared by the CPU lookup kernels (fused embedding, INT8 embedding).
//
// Position-major order: a [batch, seq] grid of tokens is visited column by column, so the
// positional row of column s is built (read, converted or computed) once per thread and
// applied to every batch row. When seq alone cannot feed the threads, each column is split into
// `chunks` batch ranges; a work unit u is (column u / chunks, batch chunk u % chunks).
// Torch-free; the callers run units with at::parallel_for.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fusedops {
namespace cpu {

// How many tokens ahead a gathered table row is prefetched: the rows are random in a table
// far larger than the caches, so hardware prefetchers cannot predict them.
constexpr int64_t kPrefetchTokens = 2;
constexpr int64_t kCacheLine = 64;
// Elements of work per parallel chunk: big enough to amortize the task, small enough to balance.
constexpr int64_t kGrainElems = int64_t{1} << 15;

struct PositionMajorPlan {
  int64_t batch;
  int64_t seq;
  int64_t chunks;  // batch ranges per column
  int64_t grain;   // units per at::parallel_for task

  int64_t units() const { return seq * chunks; }
  int64_t column(int64_t u) const { return u / chunks; }
  int64_t batch_begin(int64_t u) const { return (u % chunks) * batch / chunks; }
  int64_t batch_end(int64_t u) const { return (u % chunks + 1) * batch / chunks; }

  // The token kPrefetchTokens after batch row b of unit u in a thread's order (the same column,
  // or the start of the next unit when that unit is still this thread's, u + 1 < end), or -1.
  int64_t token_ahead(int64_t u, int64_t b, int64_t end) const {
    const int64_t ahead = b + kPrefetchTokens;
    const int64_t b1 = batch_end(u);
    if (ahead < b1) return ahead * seq + column(u);
    if (u + 1 >= end) return -1;
    const int64_t b2 = batch_begin(u + 1) + (ahead - b1);
    return b2 < batch_end(u + 1) ? b2 * seq + column(u + 1) : -1;
  }
};

// Plan for num_tokens = batch * seq tokens of dim elements on `threads` threads.
inline PositionMajorPlan plan_position_major(int64_t num_tokens, int64_t seq, int64_t dim,
                                             int64_t threads) {
  const int64_t batch = num_tokens / seq;
  const int64_t chunks = std::min<int64_t>(batch, std::max<int64_t>(1, (4 * threads + seq - 1) / seq));
  const int64_t per_unit = ((batch + chunks - 1) / chunks) * dim;
  return {batch, seq, chunks, std::max<int64_t>(1, kGrainElems / per_unit)};
}

}  // namespace cpu
}  // namespace fusedops
