// The generation step of rnnkit/kernels/step.py on CPU: one step of every layer for a few rows, in one call.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "activations.h"

using at::Tensor;
using rnnkit::sigmoid;
using rnnkit::tanh2;

// One step of every layer for a few rows (generation: batch 1 and small batches), the whole network in one call.
// At batch 1 the step is a matrix-vector product per layer, bound by reading the weights: W_ih (G*H, D) and
// W_hh (G*H, H) are read in torch's own layout (no prepared copy, no zero blocks), the hidden units are split
// over the intra-op threads, and each thread computes its units' G gate rows as dot products and then their
// gate arithmetic, in one parallel region per layer. Math as in torch.nn (gate order i, f, g, o and r, z, n).

namespace {

enum StepMode : int64_t { kTanh = 0, kRelu = 1, kLSTM = 2, kGRU = 3 };

// y[i] = W[i] . x for the 4 rows at W (row stride n): four independent accumulators share each load of x, so the
// loop is bound by reading W rather than by the latency of one accumulator's adds.
template <typename T>
inline void dot4(const T* __restrict W, const T* __restrict x, int64_t n, T* y) {
  const T* __restrict w0 = W;
  const T* __restrict w1 = W + n;
  const T* __restrict w2 = W + 2 * n;
  const T* __restrict w3 = W + 3 * n;
  T a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
  for (int64_t k = 0; k < n; ++k) {
    const T xk = x[k];
    a0 += w0[k] * xk;
    a1 += w1[k] * xk;
    a2 += w2[k] * xk;
    a3 += w3[k] * xk;
  }
  y[0] = a0;
  y[1] = a1;
  y[2] = a2;
  y[3] = a3;
}

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T acc = T(0);
  for (int64_t k = 0; k < n; ++k) acc += a[k] * b[k];
  return acc;
}

// y[n] = W[n] . x + bias[n] for rows n in [n0, n1)
template <typename T>
inline void matvec(const T* W, const T* x, const T* bias, int64_t n0, int64_t n1, int64_t K, T* y) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) dot4(W + n * K, x, K, y + n);
  for (; n < n1; ++n) y[n] = dot(W + n * K, x, K);
  if (bias)
    for (n = n0; n < n1; ++n) y[n] += bias[n];
}

template <typename T>
void step_layer(int64_t mode, const T* x, int64_t D, const T* h, const T* c, T* h_out, T* c_out, const Tensor& w_ih,
                const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh, int64_t B, int64_t H, T* gi, T* gh) {
  const int64_t G = mode == kLSTM ? 4 : mode == kGRU ? 3 : 1;
  const T* Wi = w_ih.data_ptr<T>();
  const T* Wh = w_hh.data_ptr<T>();
  const T* bi = b_ih.numel() ? b_ih.data_ptr<T>() : nullptr;
  const T* bh = b_hh.numel() ? b_hh.data_ptr<T>() : nullptr;
  // grain: at least 32 hidden units per thread, so tiny layers stay on one thread
  at::parallel_for(0, H, 32, [&](int64_t j0, int64_t j1) {
    for (int64_t q = 0; q < G; ++q)
      for (int64_t b = 0; b < B; ++b) {
        matvec(Wi, x + b * D, bi, q * H + j0, q * H + j1, D, gi + b * G * H);
        matvec(Wh, h + b * H, bh, q * H + j0, q * H + j1, H, gh + b * G * H);
      }
    for (int64_t b = 0; b < B; ++b) {
      const T* a = gi + b * G * H;
      const T* r = gh + b * G * H;
      const T* hp = h + b * H;
      T* hn = h_out + b * H;
      for (int64_t j = j0; j < j1; ++j) {
        if (mode == kLSTM) {
          const T i = sigmoid(a[j] + r[j]), f = sigmoid(a[H + j] + r[H + j]);
          const T g = tanh2(T(2) * (a[2 * H + j] + r[2 * H + j])), o = sigmoid(a[3 * H + j] + r[3 * H + j]);
          const T cn = f * c[b * H + j] + i * g;
          c_out[b * H + j] = cn;
          hn[j] = o * tanh2(T(2) * cn);
        } else if (mode == kGRU) {
          const T rr = sigmoid(a[j] + r[j]), z = sigmoid(a[H + j] + r[H + j]);
          const T n = tanh2(T(2) * (a[2 * H + j] + rr * r[2 * H + j]));
          hn[j] = n + z * (hp[j] - n);
        } else {
          const T v = a[j] + r[j];
          hn[j] = mode == kRelu ? (v > T(0) ? v : T(0)) : tanh2(T(2) * v);
        }
      }
    }
  });
}

// x (B, D), h (L, B, H), c (L, B, H) or empty; per layer w_ih, w_hh and biases (empty tensors for none).
// Returns (y (B, H), h_new (L, B, H), c_new (L, B, H) or an empty tensor).
std::tuple<Tensor, Tensor, Tensor> step(int64_t mode, Tensor x, Tensor h, Tensor c, std::vector<Tensor> w_ih,
                                        std::vector<Tensor> w_hh, std::vector<Tensor> b_ih, std::vector<Tensor> b_hh) {
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == B, "rnnkit step: x must be (B, D)");
  x = x.contiguous();
  h = h.contiguous();
  Tensor h_new = at::empty_like(h);
  Tensor c_new = mode == kLSTM ? at::empty_like(h) : at::empty({0}, h.options());
  if (mode == kLSTM) c = c.contiguous();
  const int64_t G = mode == kLSTM ? 4 : mode == kGRU ? 3 : 1;
  Tensor scratch = at::empty({2, B, G * H}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "step", [&] {
    using T = scalar_t;
    const T* in = x.data_ptr<T>();
    int64_t D = x.size(1);
    for (int64_t k = 0; k < L; ++k) {
      T* hk = h_new.data_ptr<T>() + k * B * H;
      step_layer<T>(mode, in, D, h.data_ptr<T>() + k * B * H, mode == kLSTM ? c.data_ptr<T>() + k * B * H : nullptr,
                    hk, mode == kLSTM ? c_new.data_ptr<T>() + k * B * H : nullptr, w_ih[k].contiguous(),
                    w_hh[k].contiguous(), b_ih[k], b_hh[k], B, H, scratch.data_ptr<T>(),
                    scratch.data_ptr<T>() + B * G * H);
      in = hk;
      D = H;
    }
  });
  return {h_new.select(0, L - 1).clone(), h_new, c_new};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) { m.def("step", &step); }
