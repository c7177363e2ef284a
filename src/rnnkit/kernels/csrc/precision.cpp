// The mixed-precision casts of precision.h as ops for the Python side of the fused kernels (ops.py).
#include <torch/library.h>

#include "precision.h"

namespace {

using at::Tensor;

Tensor narrow(Tensor x) { return rnnkit::narrow_bf16(x); }

// y (N, O) bfloat16 [+ bias (O,)] -> float32, into ``out`` when given (its rows contiguous), else a new tensor
Tensor widen(Tensor y, std::optional<Tensor> bias, std::optional<Tensor> out) {
  Tensor o = out.has_value() && out->defined() ? *out : at::empty(y.sizes(), y.options().dtype(at::kFloat));
  rnnkit::widen_bf16(o, y, bias, false);
  return o;
}

// acc (N, O) float32 += y (N, O) bfloat16
void accumulate(Tensor acc, Tensor y) { rnnkit::widen_bf16(acc, y, std::nullopt, true); }

// the column sums of y (N, O) bfloat16 (rows contiguous), in float32: a bias gradient without a widened copy
Tensor column_sums(Tensor y) {
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.dim() == 2 && y.stride(1) == 1,
              "rnnkit column_sums: a (N, O) bfloat16 tensor with contiguous rows");
  const int64_t N = y.size(0), O = y.size(1), ld = y.stride(0);
  Tensor out = at::zeros({O}, y.options().dtype(at::kFloat));
  float* __restrict o = out.data_ptr<float>();
  const uint16_t* a = reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>());
  for (int64_t r = 0; r < N; ++r) {
    const uint16_t* __restrict row = a + r * ld;
    for (int64_t j = 0; j < O; ++j) o[j] += rnnkit::bf16_value(row[j]);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def("column_sums", &column_sums);
  m.def("narrow", &narrow);
  m.def("widen", &widen);
  m.def("accumulate", &accumulate);
}
