// The LayerNorm LSTM and GRU as policies of the step-loop skeleton in recurrence.cpp (the interface is described
// at the top of cells.h). The math is that of the docstrings of layernorm_lstm.py and layernorm_gru.py (haste's
// form). Per step the skeleton's product gives A = h_{t-1} W_hh^T; each row then takes the layer norms of its input
// product P = x_t W_ih^T (computed for all steps at once on the Python side) and of A, the gates, and for the LSTM
// the cell's layer norm, in a few passes over the row while it sits in cache. The training forward keeps A and
// each row's LN statistics; the backward recomputes the gates from P and A (a few exps per unit: cheaper in memory
// than keeping them, so the saved tensors stay below the loop backend's, and the backward's product is not
// recomputed either), and per row gives dP and dA, adding the gains' and biases' gradients into per-thread sums.
// The Python side then does the products over each time slice: dx and the weight gradients.
//
// LN(v; a, s) = a v^ + s, v^ = (v - mean) r, r = 1 / sqrt(var + eps) (biased var, as torch's layer_norm);
// LNback(d) = r (a d - mean(a d) - v^ mean(a d v^)). The gains passed to the forward are those of the scaled
// rows (the g or n rows, and the cell LN's gain and shift, doubled: tanh(a) = 2 sigmoid(2a) - 1), those passed to
// the backward the plain ones.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "activations.h"

namespace rnnkit {

using at::Tensor;

// mean and 1 / sqrt(var + eps) of v[0..N), in two passes
template <typename T>
inline void moments(const T* __restrict v, int64_t N, T eps, T& mean, T& rstd) {
  T s = T(0);
  for (int64_t j = 0; j < N; ++j) s += v[j];
  mean = s / T(N);
  T q = T(0);
  for (int64_t j = 0; j < N; ++j) {
    const T d = v[j] - mean;
    q += d * d;
  }
  rstd = T(1) / std::sqrt(q / T(N) + eps);
}

// ---------------------------------------------------------------- LayerNorm LSTM
// Per row, from the raw products P = x_t W_ih^T and A = h_{t-1} W_hh^T (4H each):
// [i, f, g, o] = LN(P; a_ih) + b + LN(A; a_hh), k = f c_{t-1} + i g, q = tanh(LN(k; a_c, b_c)), h = o q.
// The training forward keeps A and the six LN statistics of each row ([mean, rstd] of P, of A and of k), and
// (through the skeleton's history of c) k; P is kept by the Python side. The backward recomputes the gates from
// these (four exps per unit, cheaper than keeping them: memory stays below the loop backend's) and per row gives
// dP = LNback_ih(dz) and dA = LNback_hh(dz), adding the gains' and the bias's gradients into per-thread sums.

// The layer's gains and shift: a_ih, b (= b_ih + b_hh, or zeros), a_hh (4H each), a_c, b_c (H each); in the
// forward those of the scaled rows (g rows and the cell LN doubled), in the backward the plain ones.
template <typename T>
struct LNLSTMWeights {
  const T *a_ih, *b, *a_hh, *a_c, *b_c;
};

// The gates' pass: writes k to kn and o to hn (the output pass multiplies it by q). Returns sum(k).
template <typename T>
inline T ln_lstm_gates_row(const T* __restrict pi, const T* __restrict pf, const T* __restrict pg,
                           const T* __restrict po, const T* __restrict ai, const T* __restrict af,
                           const T* __restrict ag, const T* __restrict ao, const T* __restrict wi,
                           const T* __restrict wf, const T* __restrict wg, const T* __restrict wo,
                           const T* __restrict bi, const T* __restrict bf, const T* __restrict bg,
                           const T* __restrict bo, const T* __restrict vi, const T* __restrict vf,
                           const T* __restrict vg, const T* __restrict vo, T mp, T rp, T ma, T ra,
                           const T* __restrict cp, T* __restrict kn, T* __restrict hn, int64_t H) {
  T sum = T(0);
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid(wi[j] * (pi[j] - mp) * rp + bi[j] + vi[j] * (ai[j] - ma) * ra);
    const T f = sigmoid(wf[j] * (pf[j] - mp) * rp + bf[j] + vf[j] * (af[j] - ma) * ra);
    const T g = tanh2(wg[j] * (pg[j] - mp) * rp + bg[j] + vg[j] * (ag[j] - ma) * ra);
    const T k = f * cp[j] + i * g;
    kn[j] = k;
    sum += k;
    hn[j] = sigmoid(wo[j] * (po[j] - mp) * rp + bo[j] + vo[j] * (ao[j] - ma) * ra);
  }
  return sum;
}

// One row of a step, p and a (4H) its raw products: copies a to a_kept, writes k to kn, h to hn and
// stats = [mean, rstd] of p, a and k. Not inlined: the training and the inference forward call this one compiled
// body, so they agree bit for bit (tests/test_fused_layernorm.py). Inlined into each, the row was compiled twice
// and the two copies rounded differently (-ffast-math lets the compiler reorder sums and choose its fmas per
// copy); a call per row costs nothing next to the row's passes.
template <typename T>
__attribute__((noinline)) void ln_lstm_forward_row(const T* p, const T* a, T* a_kept, const LNLSTMWeights<T>& w,
                                                   const T* cp, T* kn, T* hn, T eps, int64_t H, T* stats) {
  std::copy(a, a + 4 * H, a_kept);
  T mp, rp, ma, ra;
  moments(p, 4 * H, eps, mp, rp);
  moments(a, 4 * H, eps, ma, ra);
  const T *u = w.a_ih, *b = w.b, *v = w.a_hh;
  const T sum = ln_lstm_gates_row<T>(p, p + H, p + 2 * H, p + 3 * H, a, a + H, a + 2 * H, a + 3 * H, u, u + H,
                                     u + 2 * H, u + 3 * H, b, b + H, b + 2 * H, b + 3 * H, v, v + H, v + 2 * H,
                                     v + 3 * H, mp, rp, ma, ra, cp, kn, hn, H);
  const T mc = sum / T(H);
  T var = T(0);
  for (int64_t j = 0; j < H; ++j) var += (kn[j] - mc) * (kn[j] - mc);
  const T rc = T(1) / std::sqrt(var / T(H) + eps);
  for (int64_t j = 0; j < H; ++j) hn[j] *= tanh2(w.a_c[j] * (kn[j] - mc) * rc + w.b_c[j]);
  const T st[6] = {mp, rp, ma, ra, mc, rc};
  std::copy(st, st + 6, stats);
}

// The backward's first pass over the units: o and q again, then du = gh m o (1 - q^2) into du and
// dz_o = gh m q o(1-o) into dzo; sums da_c += du k^, db_c += du. Returns (sum a_c du, sum a_c du k^) in s.
template <typename T>
inline void ln_lstm_back_output_row(const T* __restrict po, const T* __restrict ao, const T* __restrict wo,
                                    const T* __restrict bo, const T* __restrict vo, T mp, T rp, T ma, T ra,
                                    const T* __restrict k, const T* __restrict ac, const T* __restrict bc, T mc,
                                    T rc, const T* __restrict gh, T mb, T* __restrict du, T* __restrict dzo,
                                    T* __restrict da_c, T* __restrict db_c, T* s, int64_t H) {
  T s1 = T(0), s2 = T(0);
  for (int64_t j = 0; j < H; ++j) {
    const T o = sigmoid(wo[j] * (po[j] - mp) * rp + bo[j] + vo[j] * (ao[j] - ma) * ra);
    const T kh = (k[j] - mc) * rc;
    const T q = tanh2(T(2) * (ac[j] * kh + bc[j]));
    const T gm = gh[j] * mb;
    const T d = gm * o * (T(1) - q * q);
    du[j] = d;
    dzo[j] = gm * q * o * (T(1) - o);
    da_c[j] += d * kh;
    db_c[j] += d;
    s1 += ac[j] * d;
    s2 += ac[j] * d * kh;
  }
  s[0] = s1;
  s[1] = s2;
}

// The second pass: dk = LNback_c(du) + m gc, the gates i, f, g again, dz_i, dz_f, dz_g; gc = dk f + (1 - m) gc and
// gh_{t-1} (without the product) = (1 - m) gh + dy_{t-1}.
template <typename T>
inline void ln_lstm_back_cell_row(const T* __restrict pi, const T* __restrict pf, const T* __restrict pg,
                                  const T* __restrict ai, const T* __restrict af, const T* __restrict ag,
                                  const T* __restrict wi, const T* __restrict wf, const T* __restrict wg,
                                  const T* __restrict bi, const T* __restrict bf, const T* __restrict bg,
                                  const T* __restrict vi, const T* __restrict vf, const T* __restrict vg, T mp, T rp,
                                  T ma, T ra, const T* __restrict k, const T* __restrict ac, T mc, T rc, T m1, T m2,
                                  const T* __restrict du, const T* __restrict cp, const T* __restrict gh,
                                  T* __restrict gc, const T* __restrict dy_next, T* __restrict gh_next,
                                  T* __restrict dzi, T* __restrict dzf, T* __restrict dzg, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid(wi[j] * (pi[j] - mp) * rp + bi[j] + vi[j] * (ai[j] - ma) * ra);
    const T f = sigmoid(wf[j] * (pf[j] - mp) * rp + bf[j] + vf[j] * (af[j] - ma) * ra);
    const T g = tanh2(T(2) * (wg[j] * (pg[j] - mp) * rp + bg[j] + vg[j] * (ag[j] - ma) * ra));
    const T dk = rc * (ac[j] * du[j] - m1 - (k[j] - mc) * rc * m2) + mb * gc[j];
    dzi[j] = dk * g * i * (T(1) - i);
    dzf[j] = dk * cp[j] * f * (T(1) - f);
    dzg[j] = dk * i * (T(1) - g * g);
    gc[j] = dk * f + (T(1) - mb) * gc[j];
    gh_next[j] = (dy_next ? dy_next[j] : T(0)) + (T(1) - mb) * gh[j];
  }
}

// The two LayerNorms' backward over the row's dz (4H, held in d): dP = LNback_ih(dz) into dp, and
// dA = LNback_hh(dz) over d; sums da_ih += dz P^, da_hh += dz A^, db += dz.
template <typename T>
inline void ln_lstm_back_products_row(const T* __restrict p, const T* __restrict a, const T* __restrict u,
                                      const T* __restrict v, T mp, T rp, T ma, T ra, T* __restrict d,
                                      T* __restrict dp, T* __restrict da_ih, T* __restrict da_hh, T* __restrict db,
                                      int64_t N) {
  T sp1 = T(0), sp2 = T(0), sa1 = T(0), sa2 = T(0);
  for (int64_t j = 0; j < N; ++j) {
    const T dz = d[j], ph = (p[j] - mp) * rp, ah = (a[j] - ma) * ra;
    sp1 += u[j] * dz;
    sp2 += u[j] * dz * ph;
    sa1 += v[j] * dz;
    sa2 += v[j] * dz * ah;
    da_ih[j] += dz * ph;
    da_hh[j] += dz * ah;
    db[j] += dz;
  }
  sp1 /= T(N);
  sp2 /= T(N);
  sa1 /= T(N);
  sa2 /= T(N);
  for (int64_t j = 0; j < N; ++j) {
    const T dz = d[j];
    dp[j] = rp * (u[j] * dz - sp1 - (p[j] - mp) * rp * sp2);
    d[j] = ra * (v[j] * dz - sa1 - (a[j] - ma) * ra * sa2);
  }
}

// The forward keeps stats rows of one (6, T, B) block; the backward reads a slice of it, (6, T', B) with the
// block's stride between statistics. The backward reads c from the skeleton's states: C (T+1, B, H) in place of
// S, so its prev and cur rows are c_{t-1} and k_t. The gradient sums are per thread: acc (threads, 14H) =
// [da_ih, da_hh, db (4H each), da_c, db_c (H each)].
template <typename T>
struct LayerNormLSTM {
  static constexpr bool has_cell = true;
  int64_t B, H;
  const T* P;          // x_t W_ih^T (T, B, 4H)
  T* A;                // h_{t-1} W_hh^T (T, B, 4H): kept by the training forward; (B, 4H) scratch in inference
  T* stats;            // (6, T, B): [mean, rstd] of P, A and k per row
  int64_t st;          // the stride between statistics
  LNLSTMWeights<T> w;
  T eps;
  T* DP;               // backward: dP and dA (T, B, 4H)
  Tensor dA;
  T* DA;
  T* acc;

  int64_t gates() const { return 4 * H; }
  int64_t kept() const { return 8 * H; }

  template <bool KEEP>
  void forward_row(int64_t t, int64_t b, const T* a, const T*, T* hn, const T* cp, T* cn, T) const {
    const int64_t r = t * B + b;
    T s[6];
    ln_lstm_forward_row<T>(P + r * 4 * H, a, A + (KEEP ? r : b) * 4 * H, w, cp, cn, hn, eps, H, s);
    if constexpr (KEEP)
      for (int k = 0; k < 6; ++k) stats[k * st + r] = s[k];
  }

  void backward_row(int64_t t, int64_t b, const T* cp, const T* k, const T* gh, T* gc, const T* dy_next, T* gh_next,
                    T mb) const {
    const int64_t r = t * B + b;
    const T *p = P + r * 4 * H, *a = A + r * 4 * H;
    const T mp = stats[r], rp = stats[st + r], ma = stats[2 * st + r], ra = stats[3 * st + r];
    const T mc = stats[4 * st + r], rc = stats[5 * st + r];
    T* d = DA + r * 4 * H;   // dz, then dA
    T* dp = DP + r * 4 * H;  // du (H) for a while, then dP
    T* sums = acc + at::get_thread_num() * 14 * H;
    const T *u = w.a_ih, *bb = w.b, *v = w.a_hh;
    T s[2];
    ln_lstm_back_output_row<T>(p + 3 * H, a + 3 * H, u + 3 * H, bb + 3 * H, v + 3 * H, mp, rp, ma, ra, k, w.a_c,
                               w.b_c, mc, rc, gh, mb, dp, d + 3 * H, sums + 12 * H, sums + 13 * H, s, H);
    ln_lstm_back_cell_row<T>(p, p + H, p + 2 * H, a, a + H, a + 2 * H, u, u + H, u + 2 * H, bb, bb + H, bb + 2 * H, v,
                             v + H, v + 2 * H, mp, rp, ma, ra, k, w.a_c, mc, rc, s[0] / T(H), s[1] / T(H), dp, cp,
                             gh, gc, dy_next, gh_next, d, d + H, d + 2 * H, mb, H);
    ln_lstm_back_products_row<T>(p, a, u, v, mp, rp, ma, ra, d, dp, sums, sums + 4 * H, sums + 8 * H, 4 * H);
  }

  Tensor product_rows(int64_t t) const { return dA.select(0, t); }
};

// ---------------------------------------------------------------- LayerNorm GRU
// gru.py's layout: P = x_t W_ih^T (3H) in the gate order (n, z, r), A = h_{t-1} W_hh^T (3H) in the order
// (z, r, n), a_ih and b_ih, a_hh and b_hh likewise. Per row [gi_n, gi_z, gi_r] = LN(P; a_ih, b_ih),
// [gh_z, gh_r, gh_n] = LN(A; a_hh, b_hh), then the GRU's gates. As the LayerNorm LSTM, the training forward keeps
// A and the rows' LN statistics ([mean, rstd] of P and of A), and the backward recomputes the gates.

// The layer's gains and shifts (shifts zeros where the layer has no biases); in the forward the n block doubled
template <typename T>
struct LNGRUWeights {
  const T *a_ih, *b_ih, *a_hh, *b_hh;
};

template <typename T>
inline void ln_gru_gates_row(const T* __restrict pn, const T* __restrict pz, const T* __restrict pr,
                             const T* __restrict az, const T* __restrict ar, const T* __restrict an,
                             const T* __restrict un, const T* __restrict uz, const T* __restrict ur,
                             const T* __restrict cn, const T* __restrict cz, const T* __restrict cr,
                             const T* __restrict vz, const T* __restrict vr, const T* __restrict vn,
                             const T* __restrict sz, const T* __restrict sr, const T* __restrict sn, T mp, T rp, T ma,
                             T ra, const T* __restrict hp, T* __restrict hn, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T z = sigmoid(uz[j] * (pz[j] - mp) * rp + cz[j] + vz[j] * (az[j] - ma) * ra + sz[j]);
    const T r = sigmoid(ur[j] * (pr[j] - mp) * rp + cr[j] + vr[j] * (ar[j] - ma) * ra + sr[j]);
    const T n = tanh2(un[j] * (pn[j] - mp) * rp + cn[j] + r * (vn[j] * (an[j] - ma) * ra + sn[j]));
    hn[j] = n + z * (hp[j] - n);
  }
}

// One row of a step, p and a (3H) its raw products: copies a to a_kept, writes h to hn and stats = [mean, rstd]
// of p and a. Not inlined, as ln_lstm_forward_row: training and inference run one body.
template <typename T>
__attribute__((noinline)) void ln_gru_forward_row(const T* p, const T* a, T* a_kept, const LNGRUWeights<T>& w,
                                                  const T* hp, T* hn, T eps, int64_t H, T* stats) {
  std::copy(a, a + 3 * H, a_kept);
  T mp, rp, ma, ra;
  moments(p, 3 * H, eps, mp, rp);
  moments(a, 3 * H, eps, ma, ra);
  const T *u = w.a_ih, *c = w.b_ih, *v = w.a_hh, *s = w.b_hh;
  ln_gru_gates_row<T>(p, p + H, p + 2 * H, a, a + H, a + 2 * H, u, u + H, u + 2 * H, c, c + H, c + 2 * H, v, v + H,
                      v + 2 * H, s, s + H, s + 2 * H, mp, rp, ma, ra, hp, hn, H);
  const T st[4] = {mp, rp, ma, ra};
  std::copy(st, st + 4, stats);
}

// The gates again, then gru.py's row gradient: dn = g m (1-z)(1-n^2), dz = g m (h_{t-1} - n) z(1-z),
// dr = dn gh_n r(1-r), dgh_n = dn r, into di = [dn, dz, dr] (P's order) and dh = [dz, dr, dgh_n] (A's order);
// g_{t-1} (without the product) = g (m z + 1 - m) + dy_{t-1}. The plain gains.
template <typename T>
inline void ln_gru_back_gates_row(const T* __restrict pn, const T* __restrict pz, const T* __restrict pr,
                                  const T* __restrict az, const T* __restrict ar, const T* __restrict an,
                                  const T* __restrict un, const T* __restrict uz, const T* __restrict ur,
                                  const T* __restrict cn, const T* __restrict cz, const T* __restrict cr,
                                  const T* __restrict vz, const T* __restrict vr, const T* __restrict vn,
                                  const T* __restrict sz, const T* __restrict sr, const T* __restrict sn, T mp, T rp,
                                  T ma, T ra, const T* __restrict hp, const T* __restrict g,
                                  const T* __restrict dy_next, T* __restrict g_next, T* __restrict din,
                                  T* __restrict diz, T* __restrict dir, T* __restrict dhz, T* __restrict dhr,
                                  T* __restrict dhn, T mb, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const T z = sigmoid(uz[j] * (pz[j] - mp) * rp + cz[j] + vz[j] * (az[j] - ma) * ra + sz[j]);
    const T r = sigmoid(ur[j] * (pr[j] - mp) * rp + cr[j] + vr[j] * (ar[j] - ma) * ra + sr[j]);
    const T h_n = vn[j] * (an[j] - ma) * ra + sn[j];
    const T n = tanh2(T(2) * (un[j] * (pn[j] - mp) * rp + cn[j] + r * h_n));
    const T gm = g[j] * mb;
    const T d_n = gm * (T(1) - z) * (T(1) - n * n);
    const T d_z = gm * (hp[j] - n) * z * (T(1) - z);
    const T d_r = d_n * h_n * r * (T(1) - r);
    din[j] = d_n;
    diz[j] = dhz[j] = d_z;
    dir[j] = dhr[j] = d_r;
    dhn[j] = d_n * r;
    g_next[j] = (dy_next ? dy_next[j] : T(0)) + g[j] * (mb * z + T(1) - mb);
  }
}

// In place: d (N) = dL/dLN(v) becomes dL/dv = LNback(d); adds d v^ into da and d into db.
template <typename T>
inline void ln_backward_in_place(T* __restrict d, const T* __restrict v, const T* __restrict a, T mean, T rstd,
                                 T* __restrict da, T* __restrict db, int64_t N) {
  T s1 = T(0), s2 = T(0);
  for (int64_t j = 0; j < N; ++j) {
    const T vh = (v[j] - mean) * rstd;
    s1 += a[j] * d[j];
    s2 += a[j] * d[j] * vh;
    da[j] += d[j] * vh;
    db[j] += d[j];
  }
  const T m1 = s1 / T(N), m2 = s2 / T(N);
  for (int64_t j = 0; j < N; ++j) d[j] = rstd * (a[j] * d[j] - m1 - (v[j] - mean) * rstd * m2);
}

// The forward keeps stats rows of one (4, T, B) block; the backward reads a slice of it. The gradient sums are per
// thread: acc (threads, 12H) = [da_ih, db_ih, da_hh, db_hh] (3H each, in P's and A's orders).
template <typename T>
struct LayerNormGRU {
  static constexpr bool has_cell = false;
  int64_t B, H;
  const T* P;          // x_t W_ih^T (T, B, 3H)
  T* A;                // h_{t-1} W_hh^T (T, B, 3H): kept by the training forward; (B, 3H) scratch in inference
  T* stats;            // (4, T, B): [mean, rstd] of P and A per row
  int64_t st;          // the stride between statistics
  LNGRUWeights<T> w;
  T eps;
  T* DP;               // backward: dP and dA (T, B, 3H)
  Tensor dA;
  T* DA;
  T* acc;

  int64_t gates() const { return 3 * H; }
  int64_t kept() const { return 6 * H; }

  template <bool KEEP>
  void forward_row(int64_t t, int64_t b, const T* a, const T* hp, T* hn, const T*, T*, T) const {
    const int64_t r = t * B + b;
    T s[4];
    ln_gru_forward_row<T>(P + r * 3 * H, a, A + (KEEP ? r : b) * 3 * H, w, hp, hn, eps, H, s);
    if constexpr (KEEP)
      for (int k = 0; k < 4; ++k) stats[k * st + r] = s[k];
  }

  void backward_row(int64_t t, int64_t b, const T* hp, const T*, const T* g, T*, const T* dy_next, T* g_next,
                    T mb) const {
    const int64_t r = t * B + b;
    const T *p = P + r * 3 * H, *a = A + r * 3 * H;
    const T mp = stats[r], rp = stats[st + r], ma = stats[2 * st + r], ra = stats[3 * st + r];
    T* dp = DP + r * 3 * H;
    T* da = DA + r * 3 * H;
    T* sums = acc + at::get_thread_num() * 12 * H;
    const T *u = w.a_ih, *c = w.b_ih, *v = w.a_hh, *s = w.b_hh;
    ln_gru_back_gates_row<T>(p, p + H, p + 2 * H, a, a + H, a + 2 * H, u, u + H, u + 2 * H, c, c + H, c + 2 * H, v,
                             v + H, v + 2 * H, s, s + H, s + 2 * H, mp, rp, ma, ra, hp, g, dy_next, g_next, dp,
                             dp + H, dp + 2 * H, da, da + H, da + 2 * H, mb, H);
    ln_backward_in_place<T>(dp, p, u, mp, rp, sums, sums + 3 * H, 3 * H);
    ln_backward_in_place<T>(da, a, v, ma, ra, sums + 6 * H, sums + 9 * H, 3 * H);
  }

  Tensor product_rows(int64_t t) const { return dA.select(0, t); }
};

}  // namespace rnnkit
