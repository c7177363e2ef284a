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

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def("narrow", &narrow);
  m.def("widen", &widen);
  m.def("accumulate", &accumulate);
}
