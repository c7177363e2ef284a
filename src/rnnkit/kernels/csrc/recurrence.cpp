// The per-step loops of the fused backend (rnnkit/kernels/{elman,gru,lstm}.py) on CPU, in C++. The generation
// step (rnnkit/kernels/step.py) is in step.cpp; both are built into one library (kernels/extension.py).
//
// The math is that of the docstrings of elman.py, gru.py and lstm.py. Per step: one product through oneDNN with
// weights packed once per call (or at::mm for float64), then one pass over the (B, G*H) gate values in plain
// loops that the compiler vectorises (-O3 -ffast-math lets it call glibc's vector exp), rows split over torch's
// threads when there are enough of them. While the step's values are at hand, the training forward also writes
// what the backward step needs (LSTM: the factors Q, p, F; GRU: [n, z, r, gh_n]). The backward functions run
// over any slice of the time axis and return the gradient flowing into the slice before, so the Python side
// calls them slice by slice (ops.backward_slices). Python's loop paid dispatch overhead on each of five to fifteen
// elementwise ops per step; here a step is the product plus one pass over the gates (benchmarks/KERNELS.md).
//
// Conventions shared with the Python kernels:
// - time-major tensors, contiguous: pre-activations (T, B, G*H), states S (T+1, B, H) in time order, so the
//   forward direction reads h_{t-1} from S[t] and writes h_t to S[t+1], the reverse one reads S[t+1], writes S[t];
// - tanh(a) is taken as 2 sigmoid(2a) - 1 with the tanh rows' weights already scaled by 2 (ops.tanh_scale), so
//   every activation is one exp;
// - m (T, B, 1) is the float mask (1 inside a row's length) or absent; dy arrives already multiplied by m and
//   may be a strided view as long as its rows are contiguous.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "activations.h"
#include "precision.h"

using rnnkit::sigmoid;
using rnnkit::tanh2;

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;


struct Steps {
  int64_t T;
  bool reverse;
  // the s-th step a direction visits in forward order, and the state slots it reads and writes
  int64_t at(int64_t s) const { return reverse ? T - 1 - s : s; }
  int64_t cur(int64_t t) const { return reverse ? t : t + 1; }
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t; }
  // backward visits the steps in the opposite order
  int64_t back(int64_t s) const { return reverse ? s : T - 1 - s; }
};

template <typename T>
const T* mask_ptr(const OptTensor& m) {
  return m.has_value() && m->defined() ? m->data_ptr<T>() : nullptr;
}

// The step's product x W^T (+ bias). ``w`` is either oneDNN's packed form of W (O, I), made once per call by
// mkldnn::_reorder_linear_weight (float32 on CPU: faster than MKL's sgemm at these small shapes, see
// extension.py and benchmarks/KERNELS.md), or W^T (I, O) contiguous for at::mm / at::addmm.
// x in ``to``: float32 <-> bfloat16 through precision.h (ATen's casts cost several times the bf16 product itself
// at a step's few thousand values), anything else through ATen.
Tensor cast(const Tensor& x, at::ScalarType to) {
  if (x.is_contiguous() && x.scalar_type() == at::kFloat && to == at::kBFloat16) return rnnkit::narrow_bf16(x);
  if (x.is_contiguous() && x.dim() == 2 && x.scalar_type() == at::kBFloat16 && to == at::kFloat) {
    Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
    rnnkit::widen_bf16(out, x, std::nullopt, false);
    return out;
  }
  return x.to(to);
}

// A weight in a lower precision than x (bfloat16 under autocast, rnnkit/kernels/ops.py:lower) makes the product
// run in the weight's precision: x is cast to it, the result and the bias are in x's.
Tensor product(const Tensor& x, const Tensor& w, bool packed, const OptTensor& bias = std::nullopt) {
  if (w.scalar_type() != x.scalar_type()) {
    Tensor y = cast(product(cast(x, w.scalar_type()), w, packed), x.scalar_type());
    return bias.has_value() && bias->defined() ? y.add_(*bias) : y;
  }
  if (packed) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{x, w, bias.has_value() ? c10::IValue(*bias) : c10::IValue(), std::string("none"),
                            c10::List<std::optional<at::Scalar>>(), c10::IValue()};
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }
  return bias.has_value() && bias->defined() ? at::addmm(*bias, x, w) : at::mm(x, w);
}

// out += x W^T
void add_product(Tensor& out, const Tensor& x, const Tensor& w, bool packed) {
  if (packed || w.scalar_type() != x.scalar_type())
    out.add_(product(x, w, packed));
  else
    at::addmm_out(out, out, x, w);
}

// t itself when its rows are contiguous (any strides across rows), else a contiguous copy
Tensor with_rows(const Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 3, "rnnkit recurrence: dy must be a (T, B, H) CPU tensor");
  return t.stride(2) == 1 ? t : t.contiguous();
}

// Rows per thread for a step's gate arithmetic over rows of ``width`` values: at least ~16K values each, so
// small steps stay on one thread (a parallel region costs a few microseconds).
inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)); }

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "rnnkit recurrence: ", name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), "rnnkit recurrence: ", name, " must be contiguous");
}

// ---------------------------------------------------------------- Elman

template <typename T, bool RELU>
void elman_forward_impl(Tensor& xp, Tensor& S, const OptTensor& m, bool reverse, const Tensor& w, bool packed) {
  const int64_t Tn = xp.size(0), B = xp.size(1), H = xp.size(2);
  const Steps steps{Tn, reverse};
  T* X = xp.data_ptr<T>();
  T* Sp = S.data_ptr<T>();
  const T* M = mask_ptr<T>(m);
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.at(s);
    const Tensor gh = product(S.select(0, steps.prev(t)), w, packed);  // h_{t-1} W_hh^T
    const T* GH = gh.data_ptr<T>();
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* ab = X + (t * B + b) * H;  // x_t W_ih^T + b
        const T* ghb = GH + b * H;
        const T* hp = Sp + (steps.prev(t) * B + b) * H;
        T* hn = Sp + (steps.cur(t) * B + b) * H;
        if (M && M[t * B + b] == T(0)) {
          for (int64_t j = 0; j < H; ++j) hn[j] = hp[j];  // a row past its length keeps its state
          continue;
        }
        for (int64_t j = 0; j < H; ++j) {
          const T a = ab[j] + ghb[j];
          hn[j] = RELU ? (a > T(0) ? a : T(0)) : tanh2(a);
        }
      }
    });
  }
}

void elman_forward(Tensor xp, Tensor S, OptTensor m, bool reverse, bool relu, Tensor w, bool packed) {
  check(xp, "xp");
  check(S, "S");
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "elman_forward", [&] {
    if (relu)
      elman_forward_impl<scalar_t, true>(xp, S, m, reverse, w, packed);
    else
      elman_forward_impl<scalar_t, false>(xp, S, m, reverse, w, packed);
  });
}

// da_t = g_t * m_t * act'(h_t);  g_{t-1} = da_t W_hh + (1 - m_t) * g_t + dy_{t-1}.  Fills da, returns g_{-1}.
template <typename T, bool RELU>
Tensor elman_backward_impl(const Tensor& S, const Tensor& dy, const OptTensor& m, bool reverse, const Tensor& w,
                           bool packed, const Tensor& g0, Tensor& da) {
  const int64_t Tn = dy.size(0), B = dy.size(1), H = dy.size(2);
  const Steps steps{Tn, reverse};
  const T* Sp = S.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const int64_t sT = dy.stride(0), sB = dy.stride(1);  // dy may be a strided view (rows of H contiguous)
  T* DA = da.data_ptr<T>();
  const T* M = mask_ptr<T>(m);
  Tensor g = g0 + dy.select(0, steps.back(0));
  Tensor gn = at::empty_like(g);
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.back(s);
    const T* G = g.data_ptr<T>();
    T* GN = gn.data_ptr<T>();
    const T* next = s + 1 < Tn ? DY + steps.back(s + 1) * sT : nullptr;
    at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T mb = M ? M[t * B + b] : T(1);
        const T* h = Sp + (steps.cur(t) * B + b) * H;
        const T* gb = G + b * H;
        T* dab = DA + (t * B + b) * H;
        T* gnb = GN + b * H;
        for (int64_t j = 0; j < H; ++j) {
          const T d = RELU ? (h[j] > T(0) ? T(1) : T(0)) : T(1) - h[j] * h[j];
          dab[j] = gb[j] * mb * d;
          gnb[j] = (next ? next[b * sB + j] : T(0)) + (T(1) - mb) * gb[j];
        }
      }
    });
    add_product(gn, da.select(0, t), w, packed);
    std::swap(g, gn);
  }
  return g;
}

Tensor elman_backward(Tensor S, Tensor dy, OptTensor m, bool reverse, bool relu, Tensor w, bool packed, Tensor g0,
                      Tensor da) {
  check(S, "S");
  check(da, "da");
  Tensor g;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "elman_backward", [&] {
    g = relu ? elman_backward_impl<scalar_t, true>(S, with_rows(dy), m, reverse, w, packed, g0, da)
             : elman_backward_impl<scalar_t, false>(S, with_rows(dy), m, reverse, w, packed, g0, da);
  });
  return g;
}

// ---------------------------------------------------------------- GRU
// A (T, B, 3H) holds [gi_n, gi_z, gi_r] (n rows scaled by 2; used as scratch); the hidden-side product per step
// is [gh_z, gh_r, gh_n] (the gh_n part scaled by 2, b_hh included). For training, K (T, B, 4H) keeps
// [n, z, r, gh_n] (gh_n unscaled): with h_{t-1} from S that is all the backward step needs, 4H values per row.

// One row of a GRU step. The gate blocks come as separate restrict pointers, so the compiler sees that they do
// not overlap and vectorises the loop (with offsets into one row it gives up).
template <typename T>
inline void gru_forward_row(const T* __restrict an, const T* __restrict az, const T* __restrict ar,
                            const T* __restrict gz, const T* __restrict gr, const T* __restrict gn,
                            const T* __restrict hp, T* __restrict hn, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T z = sigmoid(az[j] + gz[j]);
    const T r = sigmoid(ar[j] + gr[j]);
    const T n = tanh2(an[j] + r * gn[j]);
    hn[j] = n + z * (hp[j] - n);
  }
}

template <typename T>
inline void gru_forward_row_keep(const T* __restrict an, const T* __restrict az, const T* __restrict ar,
                                 const T* __restrict gz, const T* __restrict gr, const T* __restrict gn,
                                 const T* __restrict hp, T* __restrict hn, T* __restrict kn, T* __restrict kz,
                                 T* __restrict kr, T* __restrict kg, T inv, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T z = sigmoid(az[j] + gz[j]);
    const T r = sigmoid(ar[j] + gr[j]);
    const T n = tanh2(an[j] + r * gn[j]);
    hn[j] = n + z * (hp[j] - n);
    kn[j] = n;
    kz[j] = z;
    kr[j] = r;
    kg[j] = gn[j] * inv;
  }
}

template <typename T>
void gru_forward_impl(const Tensor& A, Tensor& S, const OptTensor& K, const OptTensor& m, bool reverse,
                      const Tensor& w, bool packed, const OptTensor& b_hh, double scale) {
  const int64_t Tn = A.size(0), B = A.size(1), H = S.size(2);
  const Steps steps{Tn, reverse};
  const T* Ap = A.data_ptr<T>();
  T* Sp = S.data_ptr<T>();
  const bool keep = K.has_value() && K->defined();
  T* Kp = keep ? K->data_ptr<T>() : nullptr;
  const T* M = mask_ptr<T>(m);
  const T inv = T(1) / T(scale);
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.at(s);
    const Tensor gh = product(S.select(0, steps.prev(t)), w, packed, b_hh);  // [gh_z, gh_r, gh_n]
    const T* GH = gh.data_ptr<T>();
    at::parallel_for(0, B, row_grain(3 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* a = Ap + (t * B + b) * 3 * H;
        const T* g = GH + b * 3 * H;
        const T* hp = Sp + (steps.prev(t) * B + b) * H;
        T* hn = Sp + (steps.cur(t) * B + b) * H;
        const T mb = M ? M[t * B + b] : T(1);
        if (keep) {
          T* k = Kp + (t * B + b) * 4 * H;
          gru_forward_row_keep<T>(a, a + H, a + 2 * H, g, g + H, g + 2 * H, hp, hn, k, k + H, k + 2 * H, k + 3 * H, inv,
                                  H);
        } else {
          gru_forward_row<T>(a, a + H, a + 2 * H, g, g + H, g + 2 * H, hp, hn, H);
        }
        if (mb == T(0))  // a row past its length keeps its state
          for (int64_t j = 0; j < H; ++j) hn[j] = hp[j];
      }
    });
  }
}

void gru_forward(Tensor A, Tensor S, OptTensor K, OptTensor m, bool reverse, Tensor w, bool packed, OptTensor b_hh,
                 double scale) {
  check(A, "A");
  check(S, "S");
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gru_forward",
                             [&] { gru_forward_impl<scalar_t>(A, S, K, m, reverse, w, packed, b_hh, scale); });
}

// dn = g m (1-z)(1-n^2), dz = g m (h_{t-1} - n) z(1-z), dr = dn gh_n r(1-r), dgh_n = dn r;
// g_{t-1} = [dz, dr, dgh_n] W_hh + g (m z + 1 - m) + dy_{t-1}.
template <typename T>
inline void gru_backward_row(const T* __restrict n, const T* __restrict z, const T* __restrict r,
                             const T* __restrict ghn, const T* __restrict hp, const T* __restrict g,
                             const T* __restrict dy_next, T* __restrict dn, T* __restrict dz, T* __restrict dr,
                             T* __restrict dghn, T* __restrict hz, T* __restrict hr, T* __restrict hn,
                             T* __restrict g_next, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T gm = g[j] * mb;
    const T d_n = gm * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    const T d_z = gm * (hp[j] - n[j]) * z[j] * (T(1) - z[j]);
    const T d_r = d_n * ghn[j] * r[j] * (T(1) - r[j]);
    const T d_h = d_n * r[j];
    dn[j] = d_n;
    dz[j] = hz[j] = d_z;
    dr[j] = hr[j] = d_r;
    dghn[j] = hn[j] = d_h;
    g_next[j] = (dy_next ? dy_next[j] : T(0)) + g[j] * (mb * z[j] + T(1) - mb);
  }
}

// K (T, B, 4H) = [n, z, r, gh_n] from the forward, S (T+1, B, H); fills dG (T, B, 4H) = [dn, dz, dr, dgh_n]
// and returns g_{-1}. Called on slices of the time axis, it carries the gradient from slice to slice.
template <typename T>
Tensor gru_backward_impl(const Tensor& K, const Tensor& S, const OptTensor& m, const Tensor& dy, bool reverse,
                         const Tensor& w, bool packed, const Tensor& g0, Tensor& dG) {
  const int64_t Tn = dy.size(0), B = dy.size(1), H = dy.size(2);
  const Steps steps{Tn, reverse};
  const T* Kp = K.data_ptr<T>();
  const T* Sp = S.data_ptr<T>();
  const T* M = mask_ptr<T>(m);
  const T* DY = dy.data_ptr<T>();
  const int64_t sT = dy.stride(0), sB = dy.stride(1);  // dy may be a strided view (rows of H contiguous)
  T* DG = dG.data_ptr<T>();
  Tensor g = g0 + dy.select(0, steps.back(0));
  Tensor gn = at::empty_like(g);
  // the step's [dz, dr, dgh_n] once more, contiguous: the product then reads it without a copy (oneDNN copies a
  // strided input on every step, which costs more than this write; benchmarks/KERNELS.md)
  Tensor dgh = at::empty({B, 3 * H}, dy.options());
  T* DGH = dgh.data_ptr<T>();
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.back(s);
    const T* G = g.data_ptr<T>();
    T* GN = gn.data_ptr<T>();
    const T* next = s + 1 < Tn ? DY + steps.back(s + 1) * sT : nullptr;
    at::parallel_for(0, B, row_grain(4 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* k = Kp + (t * B + b) * 4 * H;
        T* d = DG + (t * B + b) * 4 * H;
        T* h = DGH + b * 3 * H;
        gru_backward_row<T>(k, k + H, k + 2 * H, k + 3 * H, Sp + (steps.prev(t) * B + b) * H, G + b * H,
                            next ? next + b * sB : nullptr, d, d + H, d + 2 * H, d + 3 * H, h, h + H, h + 2 * H,
                            GN + b * H, M ? M[t * B + b] : T(1), H);
      }
    });
    add_product(gn, dgh, w, packed);
    std::swap(g, gn);
  }
  return g;
}

Tensor gru_backward(Tensor K, Tensor S, OptTensor m, Tensor dy, bool reverse, Tensor w, bool packed, Tensor g0,
                    Tensor dG) {
  check(K, "K");
  check(S, "S");
  check(dG, "dG");
  Tensor g;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "gru_backward", [&] {
    g = gru_backward_impl<scalar_t>(K, S, m, with_rows(dy), reverse, w, packed, g0, dG);
  });
  return g;
}

// ---------------------------------------------------------------- LSTM
// xp (T, B, 4H) = the input side of the pre-activations [i, f, g, o] (g rows scaled by 2). For training, the step
// overwrites xp with the factors of the backward step, Q = [g i(1-i), c_{t-1} f(1-f), i(1-g^2), m tanh(c) o(1-o)],
// and fills p = m o (1 - tanh(c)^2) and F = f, both (T, B, H). Returns c at the last step.

template <typename T, bool KEEP>
inline void lstm_forward_row(T* __restrict ai, T* __restrict af, T* __restrict ag, T* __restrict ao,
                             const T* __restrict hi, const T* __restrict hf, const T* __restrict hg,
                             const T* __restrict ho, const T* __restrict cp, T* __restrict cn, T* __restrict hn,
                             T* __restrict p, T* __restrict F, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid(ai[j] + hi[j]), f = sigmoid(af[j] + hf[j]), g = tanh2(ag[j] + hg[j]),
            o = sigmoid(ao[j] + ho[j]);
    const T c = f * cp[j] + i * g;
    const T th = tanh2(T(2) * c);
    cn[j] = c;
    hn[j] = o * th;
    if constexpr (KEEP) {
      ai[j] = g * i * (T(1) - i);
      af[j] = cp[j] * f * (T(1) - f);
      ag[j] = i * (T(1) - g * g);
      ao[j] = mb * th * o * (T(1) - o);
      p[j] = mb * o * (T(1) - th * th);
      F[j] = f;
    }
  }
}

template <typename T>
Tensor lstm_forward_impl(Tensor& xp, Tensor& S, const Tensor& c0, const OptTensor& p, const OptTensor& F,
                         const OptTensor& m, bool reverse, const Tensor& w, bool packed) {
  const int64_t Tn = xp.size(0), B = xp.size(1), H = S.size(2);
  const Steps steps{Tn, reverse};
  T* X = xp.data_ptr<T>();
  T* Sp = S.data_ptr<T>();
  const bool keep = p.has_value() && p->defined();
  T* Pp = keep ? p->data_ptr<T>() : nullptr;
  T* Fp = keep ? F->data_ptr<T>() : nullptr;
  const T* M = mask_ptr<T>(m);
  Tensor c = c0.contiguous().clone(), c_next = at::empty_like(c);  // c_{t-1} and c_t in turn
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.at(s);
    const Tensor gh = product(S.select(0, steps.prev(t)), w, packed);  // h_{t-1} W_hh^T
    const T* GH = gh.data_ptr<T>();
    at::parallel_for(0, B, row_grain(4 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* ab = X + (t * B + b) * 4 * H;
        const T* g = GH + b * 4 * H;
        const T* cp = c.data_ptr<T>() + b * H;
        T* cn = c_next.data_ptr<T>() + b * H;
        const T* hp = Sp + (steps.prev(t) * B + b) * H;
        T* hn = Sp + (steps.cur(t) * B + b) * H;
        const T mb = M ? M[t * B + b] : T(1);
        const int64_t row = (t * B + b) * H;
        if (keep)
          lstm_forward_row<T, true>(ab, ab + H, ab + 2 * H, ab + 3 * H, g, g + H, g + 2 * H, g + 3 * H, cp, cn, hn,
                                    Pp + row, Fp + row, mb, H);
        else
          lstm_forward_row<T, false>(ab, ab + H, ab + 2 * H, ab + 3 * H, g, g + H, g + 2 * H, g + 3 * H, cp, cn, hn,
                                     nullptr, nullptr, mb, H);
        if (mb == T(0))  // a row past its length keeps its state
          for (int64_t j = 0; j < H; ++j) {
            cn[j] = cp[j];
            hn[j] = hp[j];
          }
      }
    });
    std::swap(c, c_next);
  }
  return c;
}

Tensor lstm_forward(Tensor xp, Tensor S, Tensor c0, OptTensor p, OptTensor F, OptTensor m, bool reverse, Tensor w,
                    bool packed) {
  check(xp, "xp");
  check(S, "S");
  Tensor c;
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_forward",
                             [&] { c = lstm_forward_impl<scalar_t>(xp, S, c0, p, F, m, reverse, w, packed); });
  return c;
}

template <typename T>
inline void lstm_backward_row(const T* __restrict qi, const T* __restrict qf, const T* __restrict qg,
                              const T* __restrict qo, const T* __restrict p, const T* __restrict f,
                              const T* __restrict gh, T* __restrict gc, const T* __restrict dy_next, T* __restrict di,
                              T* __restrict df, T* __restrict dg, T* __restrict dO, T* __restrict gh_next, T mb,
                              int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T dc = mb * gc[j] + gh[j] * p[j];
    di[j] = dc * qi[j];
    df[j] = dc * qf[j];
    dg[j] = dc * qg[j];
    dO[j] = gh[j] * qo[j];
    gc[j] = dc * f[j] + (T(1) - mb) * gc[j];
    gh_next[j] = (dy_next ? dy_next[j] : T(0)) + (T(1) - mb) * gh[j];
  }
}

// Q (T, B, 4H), p, forget (T, B, H); fills dG (T, B, 4H) = [di, df, dg, do] and returns (gh_{-1}, gc_{-1}):
//   dc = m gc + gh p;  [di, df, dg] = dc Q[:3];  do = gh Q[3];  gc = dc f + (1 - m) gc;
//   gh = dG W_hh + (1 - m) gh + dy_{t-1}.
template <typename T>
std::tuple<Tensor, Tensor> lstm_backward_impl(const Tensor& Q, const Tensor& p, const Tensor& forget, const Tensor& dy,
                                              const OptTensor& m, bool reverse, const Tensor& w, bool packed,
                                              const Tensor& gh0, const Tensor& gc0, Tensor& dG) {
  const int64_t Tn = dy.size(0), B = dy.size(1), H = dy.size(2);
  const Steps steps{Tn, reverse};
  const T* Qp = Q.data_ptr<T>();
  const T* P = p.data_ptr<T>();
  const T* F = forget.data_ptr<T>();
  const T* DY = dy.data_ptr<T>();
  const int64_t sT = dy.stride(0), sB = dy.stride(1);  // dy may be a strided view (rows of H contiguous)
  T* DG = dG.data_ptr<T>();
  const T* M = mask_ptr<T>(m);
  Tensor gh = gh0 + dy.select(0, steps.back(0));
  Tensor ghn = at::empty_like(gh);
  Tensor gc = gc0.contiguous().clone();
  T* GC = gc.data_ptr<T>();
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.back(s);
    const T* GH = gh.data_ptr<T>();
    T* GHN = ghn.data_ptr<T>();
    const T* next = s + 1 < Tn ? DY + steps.back(s + 1) * sT : nullptr;
    at::parallel_for(0, B, row_grain(4 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T mb = M ? M[t * B + b] : T(1);
        const T* q = Qp + (t * B + b) * 4 * H;
        const T* pb = P + (t * B + b) * H;
        const T* fb = F + (t * B + b) * H;
        const T* ghb = GH + b * H;
        T* gcb = GC + b * H;
        T* d = DG + (t * B + b) * 4 * H;
        T* ghnb = GHN + b * H;
        lstm_backward_row<T>(q, q + H, q + 2 * H, q + 3 * H, pb, fb, ghb, gcb, next ? next + b * sB : nullptr, d, d + H,
                             d + 2 * H, d + 3 * H, ghnb, mb, H);
      }
    });
    add_product(ghn, dG.select(0, t), w, packed);
    std::swap(gh, ghn);
  }
  return {gh, gc};
}

std::tuple<Tensor, Tensor> lstm_backward(Tensor Q, Tensor p, Tensor forget, Tensor dy, OptTensor m, bool reverse,
                                         Tensor w, bool packed, Tensor gh0, Tensor gc0, Tensor dG) {
  check(Q, "Q");
  check(p, "p");
  check(forget, "forget");
  check(dG, "dG");
  std::tuple<Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lstm_backward", [&] {
    out = lstm_backward_impl<scalar_t>(Q, p, forget, with_rows(dy), m, reverse, w, packed, gh0, gc0, dG);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(rnnkit, m) {
  m.def("elman_forward", &elman_forward);
  m.def("elman_backward", &elman_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
}
