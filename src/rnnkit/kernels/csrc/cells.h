// The cell policies of the step-loop skeleton in recurrence.cpp for Elman (tanh, relu, identity), GRU and LSTM: the
// arithmetic of one row of one step, forward and backward. The math is that of the docstrings of elman.py, gru.py
// and lstm.py; tanh(a) is 2 sigmoid(2a) - 1 with the tanh rows already fed 2a (ops.tanh_scale).
//
// A policy is a struct with
//   static constexpr bool has_cell;   the state is (h, c), else h
//   int64_t gates() const;            G*H: columns of the step's product h_{t-1} W_hh^T (and of product_rows)
//   int64_t kept() const;             columns of kept tensors the backward reads per row (0: none); with gates()
//                                     it sets the backward's rows per thread
//   template <bool KEEP> void forward_row(t, b, gh, hp, hn, cp, cn, mb) const;
//       row b of step t from gh, the row's product: writes h_t to hn (and c_t to cn, from c_{t-1} at cp); with
//       KEEP also what the backward reads. The skeleton calls it with KEEP for every row, without only for rows
//       inside their length (mb = 1), and then copies h_{t-1} (and c_{t-1}) over a row past its length.
//   void backward_row(t, b, prev, cur, g, gc, dy_next, g_next, mb) const;
//       row b of backward step t: g = dL/dh_t (and gc = dL/dc_t, updated in place to dL/dc_{t-1}); writes the
//       row's gate gradients, its row of product_rows(t), and g_next = dy_{t-1} + the part of dL/dh_{t-1} that
//       does not pass through W_hh (dy_next is null on the slice's last step). prev, cur: the row of the states
//       the backward was given (h_{t-1} and h_t from S, or c's), else null.
//   Tensor product_rows(int64_t t) const;
//       the step's (B, gates) gradient rows whose product with W_hh the skeleton adds into g_next.
// Every row function takes each gate block as its own restrict pointer: the compiler then sees that the blocks
// do not overlap and vectorises the loop (with offsets into one row it gives up).
//
// Zoneout (Krueger et al. 2016), in the policies built with a zone type Z (void: none): per step, row and unit,
// either a mask in uint8_t (training: 1 where the unit keeps its previous value, else 0) or the weight z of the
// previous value in T (evaluation: p). The new value is zoned(fresh, old), and the backward reads m_t (1 - z) (0
// for a kept unit) wherever it read m_t: a zoned unit passes its gradient straight to the previous state. The
// rows' masks m_t are the skeleton's, as without zoneout.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

#include "activations.h"
#include "precision.h"

namespace rnnkit {

using at::Tensor;

// The zoned value of unit j, (1 - z) fresh + z old: old where kept (z = 1), fresh where not (z = 0), or the mix for
// a weight z; fresh without zoneout.
template <typename Z, typename T>
inline T zoned(T fresh, T old, const Z* z, int64_t j) {
  if constexpr (std::is_void_v<Z>) {
    return fresh;
  } else {
    const T k = T(z[j]);
    return (T(1) - k) * fresh + k * old;
  }
}

// The zoneout values of one row from its offset (null without zoneout)
template <typename Z>
inline const Z* zone_row(const Z* z, int64_t offset) {
  if constexpr (std::is_void_v<Z>) {
    return nullptr;
  } else {
    return z ? z + offset : nullptr;
  }
}

// What m_t becomes for unit j: 0 where kept, else m_t; m_t (1 - z) for a weight z
template <typename Z, typename T>
inline T updated(T mb, const Z* z, int64_t j) {
  if constexpr (std::is_void_v<Z>) {
    return mb;
  } else {
    return mb * (T(1) - T(z[j]));
  }
}

// ---------------------------------------------------------------- Elman
// The activation: tanh (fed 2a, see the top), relu, or identity (a linear recurrence: the i2h cell's state).

enum class Act : int64_t { Tanh = 0, Relu = 1, Identity = 2 };

template <Act A, typename T>
inline T activate(T v) {
  if constexpr (A == Act::Tanh) return tanh2(v);
  if constexpr (A == Act::Relu) return v > T(0) ? v : T(0);
  return v;
}

// act'(a_t) from h_t = act(a_t)
template <Act A, typename T>
inline T activation_grad(T h) {
  if constexpr (A == Act::Tanh) return T(1) - h * h;
  if constexpr (A == Act::Relu) return h > T(0) ? T(1) : T(0);
  return T(1);
}

// With zoneout, h_t = zoned(act(a_t), h_{t-1}): a kept unit's h_t is not act(a_t), but its gradient is zero, so
// act' still comes from h_t; with weights z (evaluation) every h_t is a mix, and the training forward (KEEP)
// writes act'(a_t) over a_t for the backward (``kept_grad``).
template <typename Z>
constexpr bool kept_grad = std::is_floating_point_v<Z>;

template <typename T, Act A, typename L, typename Z, bool KEEP>
inline void elman_forward_row(L* __restrict a, const T* __restrict gh, const T* __restrict hp,
                              const Z* __restrict z, T* __restrict hn, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T v = activate<A>(T(load(a[j])) + gh[j]);
    if constexpr (KEEP && kept_grad<Z>) a[j] = store<L>(activation_grad<A>(v));
    hn[j] = zoned(v, hp[j], z, j);
  }
}

// da_t = g_t * m_t * act'(h_t);  g_{t-1} = da_t W_hh + (1 - m_t) * g_t + dy_{t-1}
// (with zoneout: updated(m_t) for m_t, and act' from dact with weights)
template <typename T, Act A, typename L, typename Z>
inline void elman_backward_row(const T* __restrict h, const L* __restrict dact, const Z* __restrict z,
                               const T* __restrict g, const T* __restrict dy_next, L* __restrict da,
                               T* __restrict g_next, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T m = updated(mb, z, j);
    T d;
    if constexpr (kept_grad<Z>)
      d = T(load(dact[j]));
    else
      d = activation_grad<A>(h[j]);
    da[j] = store<L>(g[j] * m * d);
    g_next[j] = (dy_next ? dy_next[j] : T(0)) + (T(1) - m) * g[j];
  }
}

// X (T, B, H) = x_t W_ih^T + b (scaled by 2 for tanh); the backward fills da (T, B, H) and keeps nothing else:
// act' comes from h_t. X and da are stored as L: T, or bfloat16 in mixed precision (they only meet bf16
// products), where the bias is added to the step's product instead. With zoneout, Zo (T, B, H) and, for the
// backward with weights, act'(a_t) in X (written by the training forward).
template <typename T, Act A, typename L = T, typename Z = void>
struct Elman {
  static constexpr bool has_cell = false;
  int64_t B, H;
  L* X;       // forward; with zoneout weights, act' after the training forward
  Tensor da;  // backward
  L* DA;
  const Z* Zo = nullptr;

  int64_t gates() const { return H; }
  int64_t kept() const { return kept_grad<Z> ? H : 0; }

  template <bool KEEP>
  void forward_row(int64_t t, int64_t b, const T* gh, const T* hp, T* hn, const T*, T*, T) const {
    const int64_t row = (t * B + b) * H;
    elman_forward_row<T, A, L, Z, KEEP>(X + row, gh, hp, zone_row(Zo, row), hn, H);
  }

  void backward_row(int64_t t, int64_t b, const T*, const T* h, const T* g, T*, const T* dy_next, T* g_next,
                    T mb) const {
    const int64_t row = (t * B + b) * H;
    elman_backward_row<T, A, L, Z>(h, kept_grad<Z> ? X + row : nullptr, zone_row(Zo, row), g, dy_next, DA + row,
                                   g_next, mb, H);
  }

  Tensor product_rows(int64_t t) const { return da.select(0, t); }
};

// ---------------------------------------------------------------- GRU
// A (T, B, 3H) holds [gi_n, gi_z, gi_r] (n rows scaled by 2); the hidden-side product per step is
// [gh_z, gh_r, gh_n] (the gh_n part scaled by 2, b_hh included). For training, K (T, B, 4H) keeps
// [n, z, r, gh_n] (gh_n unscaled): with h_{t-1} from S that is all the backward step needs, 4H values per row.
// In mixed precision (L = bfloat16) A holds the input side without its bias, which comes as bi (the n, z, r
// blocks, fp32) and is added here; the gate gradients are stored as L. K stays T: its n sits next to h_{t-1} in
// dz's (h_{t-1} - n), a difference that would lose bits in bf16.

template <typename T, bool KEEP, typename L, typename Z>
inline void gru_forward_row(const L* __restrict an, const L* __restrict az, const L* __restrict ar,
                            const T* __restrict bn, const T* __restrict bz, const T* __restrict br,
                            const T* __restrict gz, const T* __restrict gr, const T* __restrict gn,
                            const T* __restrict hp, const Z* __restrict zo, T* __restrict hn, T* __restrict kn,
                            T* __restrict kz, T* __restrict kr, T* __restrict kg, T inv, int64_t H) {
  constexpr bool bias = !std::is_same_v<L, T>;
  for (int64_t j = 0; j < H; ++j) {
    const T z = sigmoid(T(load(az[j])) + (bias ? bz[j] : T(0)) + gz[j]);
    const T r = sigmoid(T(load(ar[j])) + (bias ? br[j] : T(0)) + gr[j]);
    const T n = tanh2(T(load(an[j])) + (bias ? bn[j] : T(0)) + r * gn[j]);
    hn[j] = zoned(n + z * (hp[j] - n), hp[j], zo, j);
    if constexpr (KEEP) {
      kn[j] = n;
      kz[j] = z;
      kr[j] = r;
      kg[j] = gn[j] * inv;
    }
  }
}

// dn = g m (1-z)(1-n^2), dz = g m (h_{t-1} - n) z(1-z), dr = dn gh_n r(1-r), dgh_n = dn r;
// g_{t-1} = [dz, dr, dgh_n] W_hh + g (m z + 1 - m) + dy_{t-1}.
// With COPY, [dz, dr, dgh_n] is also written to hz, hr, hn: a contiguous row for the product. With zoneout,
// updated(m) for m.
template <typename T, bool COPY, typename L, typename Z>
inline void gru_backward_row(const T* __restrict n, const T* __restrict z, const T* __restrict r,
                             const T* __restrict ghn, const T* __restrict hp, const Z* __restrict zo,
                             const T* __restrict g, const T* __restrict dy_next, L* __restrict dn, L* __restrict dz,
                             L* __restrict dr, L* __restrict dghn, L* __restrict hz, L* __restrict hr,
                             L* __restrict hn, T* __restrict g_next, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T m = updated(mb, zo, j);
    const T gm = g[j] * m;
    const T d_n = gm * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    const T d_z = gm * (hp[j] - n[j]) * z[j] * (T(1) - z[j]);
    const T d_r = d_n * ghn[j] * r[j] * (T(1) - r[j]);
    const T d_h = d_n * r[j];
    dn[j] = store<L>(d_n);
    dz[j] = store<L>(d_z);
    dr[j] = store<L>(d_r);
    dghn[j] = store<L>(d_h);
    if constexpr (COPY) {
      hz[j] = store<L>(d_z);
      hr[j] = store<L>(d_r);
      hn[j] = store<L>(d_h);
    }
    g_next[j] = (dy_next ? dy_next[j] : T(0)) + g[j] * (m * z[j] + T(1) - m);
  }
}

// Backward: K (T, B, 4H) and S from the forward; fills dG (T, B, 4H) = [dn, dz, dr, dgh_n], and writes the
// step's [dz, dr, dgh_n] once more into the contiguous scratch dgh (B, 3H), so that the product reads it without
// a copy (oneDNN copies a strided input on every step, which costs more than this write; benchmarks/KERNELS.md).
// With zoneout, Zo (T, B, H).
template <typename T, typename L = T, typename Z = void>
struct GRU {
  static constexpr bool has_cell = false;
  int64_t B, H;
  const L* A;             // forward
  const T* BI = nullptr;  // the input-side bias [b_n, b_z, b_r] when A lacks it (L = bf16)
  T* K;                   // written by the training forward, read by the backward
  T inv;                  // 1 / the tanh scale: K keeps gh_n unscaled
  L* DG;                  // backward
  Tensor dgh;
  L* DGH;
  const Z* Zo = nullptr;

  int64_t gates() const { return 3 * H; }
  int64_t kept() const { return 4 * H; }

  template <bool KEEP>
  void forward_row(int64_t t, int64_t b, const T* g, const T* hp, T* hn, const T*, T*, T) const {
    const L* a = A + (t * B + b) * 3 * H;
    const T *bn = BI, *bz = BI ? BI + H : nullptr, *br = BI ? BI + 2 * H : nullptr;
    const Z* zo = zone_row(Zo, (t * B + b) * H);
    if constexpr (KEEP) {
      T* k = K + (t * B + b) * 4 * H;
      gru_forward_row<T, true, L, Z>(a, a + H, a + 2 * H, bn, bz, br, g, g + H, g + 2 * H, hp, zo, hn, k, k + H,
                                     k + 2 * H, k + 3 * H, inv, H);
    } else {
      gru_forward_row<T, false, L, Z>(a, a + H, a + 2 * H, bn, bz, br, g, g + H, g + 2 * H, hp, zo, hn, nullptr,
                                      nullptr, nullptr, nullptr, inv, H);
    }
  }

  void backward_row(int64_t t, int64_t b, const T* hp, const T*, const T* g, T*, const T* dy_next, T* g_next,
                    T mb) const {
    const T* k = K + (t * B + b) * 4 * H;
    L* d = DG + (t * B + b) * 4 * H;
    L* h = DGH + b * 3 * H;
    const Z* zo = zone_row(Zo, (t * B + b) * H);
    gru_backward_row<T, true, L, Z>(k, k + H, k + 2 * H, k + 3 * H, hp, zo, g, dy_next, d, d + H, d + 2 * H,
                                    d + 3 * H, h, h + H, h + 2 * H, g_next, mb, H);
  }

  Tensor product_rows(int64_t) const { return dgh; }
};

// ---------------------------------------------------------------- LSTM
// X (T, B, 4H) = the input side of the pre-activations [i, f, g, o] (g rows scaled by 2). For training, the step
// overwrites X with the factors of the backward step, Q = [g i(1-i), c_{t-1} f(1-f), i(1-g^2), m tanh(c) o(1-o)],
// and fills p = m o (1 - tanh(c)^2) and F = f, both (T, B, H). X, Q and the gate gradients dG are stored as L:
// T, or bfloat16 in mixed precision (the values only meet bf16 products or, for Q, a product with the fp32 carry),
// while c, h, p, F and the carried gradients stay T.

// With zoneout, c_t = zoned(c~, c_{t-1}) and h_t = zoned(o tanh(c~), h_{t-1}), both from the candidate c~ (with
// zh and zc), and updated(m) by zh for m in Q[3] and p.
template <typename T, bool KEEP, typename L, typename Z>
inline void lstm_forward_row(L* __restrict ai, L* __restrict af, L* __restrict ag, L* __restrict ao,
                             const T* __restrict hi, const T* __restrict hf, const T* __restrict hg,
                             const T* __restrict ho, const T* __restrict cp, const T* __restrict hp,
                             const Z* __restrict zh, const Z* __restrict zc, T* __restrict cn, T* __restrict hn,
                             T* __restrict p, T* __restrict F, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid(T(load(ai[j])) + hi[j]), f = sigmoid(T(load(af[j])) + hf[j]),
            g = tanh2(T(load(ag[j])) + hg[j]), o = sigmoid(T(load(ao[j])) + ho[j]);
    const T c = f * cp[j] + i * g;
    const T th = tanh2(T(2) * c);
    const T mh = updated(mb, zh, j);
    cn[j] = zoned(c, cp[j], zc, j);
    hn[j] = zoned(o * th, hp[j], zh, j);
    if constexpr (KEEP) {
      ai[j] = store<L>(g * i * (T(1) - i));
      af[j] = store<L>(cp[j] * f * (T(1) - f));
      ag[j] = store<L>(i * (T(1) - g * g));
      ao[j] = store<L>(mh * th * o * (T(1) - o));
      p[j] = mh * o * (T(1) - th * th);
      F[j] = f;
    }
  }
}

// dc = m gc + gh p;  [di, df, dg] = dc Q[:3];  do = gh Q[3];  gc = dc f + (1 - m) gc;
// gh_{t-1} = dG W_hh + (1 - m) gh + dy_{t-1}.  With zoneout, updated(m) by zc on the c path and by zh on the h path.
template <typename T, typename L, typename Z>
inline void lstm_backward_row(const L* __restrict qi, const L* __restrict qf, const L* __restrict qg,
                              const L* __restrict qo, const T* __restrict p, const T* __restrict f,
                              const Z* __restrict zh, const Z* __restrict zc, const T* __restrict gh,
                              T* __restrict gc, const T* __restrict dy_next, L* __restrict di, L* __restrict df,
                              L* __restrict dg, L* __restrict dO, T* __restrict gh_next, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T mc = updated(mb, zc, j);
    const T mh = updated(mb, zh, j);
    const T dc = mc * gc[j] + gh[j] * p[j];
    di[j] = store<L>(dc * T(load(qi[j])));
    df[j] = store<L>(dc * T(load(qf[j])));
    dg[j] = store<L>(dc * T(load(qg[j])));
    dO[j] = store<L>(gh[j] * T(load(qo[j])));
    gc[j] = dc * f[j] + (T(1) - mc) * gc[j];
    gh_next[j] = (dy_next ? dy_next[j] : T(0)) + (T(1) - mh) * gh[j];
  }
}

// Backward: Q (in X), p, F from the forward; fills dG (T, B, 4H) = [di, df, dg, do], whose step rows are the
// product's. With zoneout, Zo (T, 2, B, H): per step, h's, then c's.
template <typename T, typename L = T, typename Z = void>
struct LSTM {
  static constexpr bool has_cell = true;
  int64_t B, H;
  L* X;  // the forward's pre-activations, then (and in the backward) Q
  T* P;  // p and F: written by the training forward, read by the backward
  T* F;
  Tensor dG;  // backward
  L* DG;
  const Z* Zo = nullptr;

  int64_t gates() const { return 4 * H; }
  int64_t kept() const { return 4 * H; }

  const Z* zh(int64_t t, int64_t b) const { return zone_row(Zo, (2 * t * B + b) * H); }
  const Z* zc(int64_t t, int64_t b) const { return zone_row(Zo, ((2 * t + 1) * B + b) * H); }

  template <bool KEEP>
  void forward_row(int64_t t, int64_t b, const T* g, const T* hp, T* hn, const T* cp, T* cn, T mb) const {
    L* a = X + (t * B + b) * 4 * H;
    const int64_t row = (t * B + b) * H;
    lstm_forward_row<T, KEEP, L, Z>(a, a + H, a + 2 * H, a + 3 * H, g, g + H, g + 2 * H, g + 3 * H, cp, hp, zh(t, b),
                                    zc(t, b), cn, hn, KEEP ? P + row : nullptr, KEEP ? F + row : nullptr, mb, H);
  }

  void backward_row(int64_t t, int64_t b, const T*, const T*, const T* gh, T* gc, const T* dy_next, T* gh_next,
                    T mb) const {
    const L* q = X + (t * B + b) * 4 * H;
    const int64_t row = (t * B + b) * H;
    L* d = DG + (t * B + b) * 4 * H;
    lstm_backward_row<T, L, Z>(q, q + H, q + 2 * H, q + 3 * H, P + row, F + row, zh(t, b), zc(t, b), gh, gc, dy_next,
                               d, d + H, d + 2 * H, d + 3 * H, gh_next, mb, H);
  }

  Tensor product_rows(int64_t t) const { return dG.select(0, t); }
};

}  // namespace rnnkit
