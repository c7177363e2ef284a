// float32 <-> bfloat16 for the fused kernels' mixed precision (rnnkit/kernels/ops.py:lower): bf16 products, fp32
// states, gates and sums. Each is one plain pass the compiler vectorises, rows split over torch's threads when
// large: ATen's casts and its type-promoting add took several times as long on the kernels' buffers
// (benchmarks/KERNELS.md). Rounding is to nearest even, as torch's.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <optional>
#include <type_traits>

namespace rnnkit {

// a NaN stays a NaN (rounding its low bits could carry it into infinity)
inline uint16_t bf16_bits(uint32_t u) {
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : rounded;
}

inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

// ~64K values per thread: below that a parallel region costs more than it saves
constexpr int64_t kCastGrain = 1 << 16;

// x (float32, contiguous) as bfloat16
inline at::Tensor narrow_bf16(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "rnnkit narrow: a contiguous float32 tensor");
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const uint32_t* a = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  uint16_t* b = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, x.numel(), kCastGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) b[i] = bf16_bits(a[i]);
  });
  return out;
}

// out (float32, rows contiguous) = y (bfloat16 (N, O), contiguous) + bias (O) when given, or += y with ``add``
inline void widen_bf16(at::Tensor& out, const at::Tensor& y, const std::optional<at::Tensor>& bias, bool add) {
  TORCH_CHECK(y.scalar_type() == at::kBFloat16 && y.is_contiguous() && y.dim() == 2,
              "rnnkit widen: a contiguous (N, O) bfloat16 tensor");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == y.size(0) &&
                  out.size(1) == y.size(1) && out.stride(1) == 1,
              "rnnkit widen: out must be float32 (N, O) with contiguous rows");
  const int64_t N = y.size(0), O = y.size(1), ld = out.stride(0);
  const uint16_t* a = reinterpret_cast<const uint16_t*>(y.data_ptr<at::BFloat16>());
  float* o = out.data_ptr<float>();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = has_bias ? b.data_ptr<float>() : nullptr;
  at::parallel_for(0, N, std::max<int64_t>(1, kCastGrain / std::max<int64_t>(1, O)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint16_t* __restrict ar = a + r * O;
      float* __restrict orow = o + r * ld;
      if (add)
        for (int64_t j = 0; j < O; ++j) orow[j] += bf16_value(ar[j]);
      else if (bp)
        for (int64_t j = 0; j < O; ++j) orow[j] = bf16_value(ar[j]) + bp[j];
      else
        for (int64_t j = 0; j < O; ++j) orow[j] = bf16_value(ar[j]);
    }
  });
}

// Loads and stores of a kernel buffer whose storage L is the compute type T itself or bfloat16 (the mixed-precision
// LSTM keeps its pre-activations, factors and gate gradients in bf16).
template <typename T>
inline T load(T v) {
  return v;
}
inline float load(at::BFloat16 v) { return bf16_value(v.x); }

template <typename L, typename T>
inline L store(T v) {
  if constexpr (std::is_same_v<L, at::BFloat16>) {
    uint32_t u;
    __builtin_memcpy(&u, &v, 4);
    L out;
    out.x = bf16_bits(u);
    return out;
  } else {
    return L(v);
  }
}

}  // namespace rnnkit
