// The schemas of the C++ ops: the project's only TORCH_LIBRARY(fusedops) (the Python custom ops
// join the namespace through fragments). Implementations: CPU in embedding_bindings.cpp,
// embedding_layernorm_bindings.cpp, int8_bindings.cpp and rope_bindings.cpp, CUDA in
// int8_bindings_cuda.cpp (CUDA builds only);
// fake (meta) implementations in python/fusedops/ops/cpp_fakes.py.
#include <torch/library.h>

TORCH_LIBRARY(fusedops, m) {
  m.set_python_module("fusedops.ops.cpp_fakes");
  // Fused embedding: token gather * scale + positional term (pos_mode: lookup_constants.h).
  // vocab_start: the table is the shard of rows [vocab_start, vocab_start + V) of a larger
  // vocabulary; ids outside it contribute no token term (forward) and no gradient (backward),
  // and only positions are range-checked. None: ids are range-checked against [0, V).
  m.def(
      "cpp_embedding_fwd(Tensor input_ids, Tensor weight, float scale, Tensor? pos_weight, "
      "Tensor? positions, int position_offset, int pos_mode, float sinusoid_base, "
      "int? vocab_start=None) -> Tensor");
  m.def(
      "cpp_embedding_bwd(Tensor grad_out, Tensor indices, int num_rows, float scale, "
      "int padding_idx, int vocab_start=0) -> Tensor");
  // Factorized embedding: row(t) = hot_rows[hot_slots[t]] if hot_slots[t] >= 0 else a[t] @ b,
  // times scale, plus the positional term. hot_slots: [V] int32 (-1: not hot). The backward
  // returns the gradients of (a, b, hot_rows), an empty tensor where needs[i] is 0 or the term
  // is absent; tokens equal to padding_idx (-1: none) contribute nothing.
  m.def(
      "cpp_factorized_embedding_fwd(Tensor input_ids, Tensor a, Tensor b, Tensor? hot_slots, "
      "Tensor? hot_rows, float scale, Tensor? pos_weight, Tensor? positions, "
      "int position_offset, int pos_mode, float sinusoid_base) -> Tensor");
  m.def(
      "cpp_factorized_embedding_bwd(Tensor grad_out, Tensor input_ids, Tensor a, Tensor b, "
      "Tensor? hot_slots, int num_hot, float scale, int padding_idx, int[] needs) "
      "-> (Tensor, Tensor, Tensor)");
  // Fused BERT embedding + LayerNorm: word + token type + position rows, LayerNorm in fp32.
  // The forward also returns the per-token mean and rstd (fp32) the backward reads; the backward
  // returns the gradients of (weight, pos_weight, type_weight, ln_weight, ln_bias), an empty
  // tensor where needs[i] is 0 or the term is absent.
  m.def(
      "cpp_embedding_layernorm_fwd(Tensor input_ids, Tensor weight, Tensor? pos_weight, "
      "Tensor? positions, int position_offset, Tensor? type_weight, Tensor? token_type_ids, "
      "Tensor? ln_weight, Tensor? ln_bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "cpp_embedding_layernorm_bwd(Tensor grad_out, Tensor input_ids, Tensor weight, "
      "Tensor? pos_weight, Tensor? positions, int position_offset, Tensor? type_weight, "
      "Tensor? token_type_ids, Tensor? ln_weight, Tensor? ln_bias, Tensor mean, Tensor rstd, "
      "int padding_idx, int[] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // INT8 embedding (inference). check_indices: the CPU kernel always range-checks ids and
  // positions; the CUDA kernel does when it is true (a device sync) and otherwise masks
  // out-of-range ones without a sync (int8_math.h).
  m.def(
      "int8_embedding_fwd(Tensor input_ids, Tensor qweight, Tensor scales, float scale, "
      "Tensor? pos_weight, Tensor? positions, int position_offset, int pos_mode, "
      "float sinusoid_base, ScalarType out_dtype, bool check_indices=True, "
      "int? vocab_start=None) -> Tensor");
  // Rotary position embedding of q and k (one pass, writes out_q/out_k; out_q may be q).
  // cos/sin are read at element (batch, row, col) through the given element strides, so views of
  // a cache need no copy.
  m.def(
      "cpp_rope(Tensor q, Tensor? k, Tensor cos, Tensor sin, int[] cos_strides, "
      "int[] sin_strides, Tensor? positions, int position_offset, bool cache, bool interleaved, "
      "int rotary_dim, bool backward, Tensor(a!) out_q, Tensor(b!)? out_k) -> ()");
}
