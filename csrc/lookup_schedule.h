// Token schedules shared by the CPU lookup kernels (fused embedding, INT8 embedding): run_lookup
// drives a kernel's per-token work over at::parallel_for threads.
//
// Position-major order: a [batch, seq] grid of tokens is visited column by column, so the
// positional row of column s is built (read, converted or computed) once per thread and
// applied to every batch row. When seq alone cannot feed the threads, each column is split into
// `chunks` batch ranges; a work unit u is (column u / chunks, batch chunk u % chunks).
// Token-major order (positions that differ between batch rows): tokens in order, each with its
// own positional row, rebuilt only when the position changes.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_vec.h"
#include "lookup_constants.h"

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

  // Work unit u: batch rows [begin, end) of column `column`.
  struct Unit {
    int64_t column, begin, end;
  };

  int64_t units() const { return seq * chunks; }
  Unit unit(int64_t u) const {
    const int64_t c = u % chunks;
    return {u / chunks, c * batch / chunks, (c + 1) * batch / chunks};
  }

  // Visits the tokens of units [begin, end) (one thread's share) in order: column(s) when a
  // unit starts (consecutive units may share a column), then token(n, ahead) for each token n,
  // where `ahead` is the token kPrefetchTokens later in this order (in the same unit, or in the
  // next one when it is still this thread's), or -1.
  template <typename ColumnFn, typename TokenFn>
  void visit(int64_t begin, int64_t end, ColumnFn&& column, TokenFn&& token) const {
    if (begin >= end) return;
    Unit cur = unit(begin);
    for (int64_t u = begin; u < end; ++u) {
      const Unit next = u + 1 < end ? unit(u + 1) : Unit{0, 0, 0};
      column(cur.column);
      for (int64_t b = cur.begin; b < cur.end; ++b) {
        const int64_t ahead = b + kPrefetchTokens;
        const int64_t spill = next.begin + (ahead - cur.end);  // row in the next unit
        const int64_t n_ahead = ahead < cur.end ? ahead * seq + cur.column
                                : spill < next.end ? spill * seq + next.column
                                                   : -1;
        token(b * seq + cur.column, n_ahead);
      }
      cur = next;
    }
  }
};

// Plan for num_tokens = batch * seq tokens of dim elements on `threads` threads.
inline PositionMajorPlan plan_position_major(int64_t num_tokens, int64_t seq, int64_t dim,
                                             int64_t threads) {
  const int64_t batch = num_tokens / seq;
  const int64_t chunks =
      std::min<int64_t>(batch, std::max<int64_t>(1, (4 * threads + seq - 1) / seq));
  const int64_t per_unit = ((batch + chunks - 1) / chunks) * dim;
  return {batch, seq, chunks, std::max<int64_t>(1, kGrainElems / per_unit)};
}

// Runs a lookup kernel over all its tokens. The kernel provides:
//   a                              its arguments (num_tokens, seq_len, dim, pos_mode)
//   stream                         whether its rows use non-temporal stores (fenced here)
//   positions_repeat()             whether token n's position depends on n % seq_len only
//   position(n)                    token n's position
//   pos_row(pos, buf)              the fp32 positional row of pos (buf: 2 * ceil(D/2) floats), or
//                                  nullptr without a positional term
//   scratch_size()                 floats of per-thread scratch token() needs
//   prefetch_token(n)              request token n's table row
//   token(n, prow, scratch)        write token n's output row
template <typename Kernel>
void run_lookup(const Kernel& k) {
  const auto& a = k.a;
  const bool has_pos = a.pos_mode != PosMode::kNone;
  const int64_t buf_size = has_pos ? 2 * ((a.dim + 1) / 2) : 0;
  if (has_pos && a.seq_len > 0 && a.num_tokens > a.seq_len && k.positions_repeat()) {
    const PositionMajorPlan plan =
        plan_position_major(a.num_tokens, a.seq_len, a.dim, at::get_num_threads());
    at::parallel_for(0, plan.units(), plan.grain, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(static_cast<size_t>(buf_size));
      std::vector<float> scratch(static_cast<size_t>(k.scratch_size()));
      int64_t last_s = -1;
      const float* prow = nullptr;
      plan.visit(
          begin, end,
          [&](int64_t s) {
            if (s != last_s) prow = k.pos_row(k.position(s), buf.data());
            last_s = s;
          },
          [&](int64_t n, int64_t ahead) {
            if (ahead >= 0) k.prefetch_token(ahead);
            k.token(n, prow, scratch.data());
          });
      if (k.stream) stream_fence();
    });
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, a.dim));
  at::parallel_for(0, a.num_tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(buf_size));
    std::vector<float> scratch(static_cast<size_t>(k.scratch_size()));
    int64_t last_pos = 0;
    const float* prow = nullptr;
    bool have_row = false;
    for (int64_t n = begin; n < end; ++n) {
      if (n + kPrefetchTokens < end) k.prefetch_token(n + kPrefetchTokens);
      if (has_pos) {
        const int64_t pos = k.position(n);
        if (!have_row || pos != last_pos) prow = k.pos_row(pos, buf.data());
        last_pos = pos;
        have_row = true;
      }
      k.token(n, prow, scratch.data());
    }
    if (k.stream) stream_fence();
  });
}

}  // namespace cpu
}  // namespace fusedops
