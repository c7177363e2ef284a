// The per-step loops of the fused backend (rnnkit/kernels/{elman,gru,lstm,layernorm_lstm,layernorm_gru}.py) on CPU,
// in C++. The generation step (rnnkit/kernels/step.py) is in step.cpp; both are built into one library
// (kernels/extension.py).
//
// One forward and one backward step loop serve every cell (the skeleton below): the order of the steps, the
// step's product through oneDNN with weights packed once per call (or at::mm for float64), the rows split over
// torch's threads when there are enough of them, the mask, and in the backward the carried gradient and the next
// step's dy. A cell is a policy, a struct with the arithmetic of one row (cells.h: Elman, GRU, LSTM;
// layernorm_cells.h: the LayerNorm LSTM and GRU): plain loops over the row that the compiler vectorises (-O3
// -ffast-math lets it call glibc's vector exp). While a row's values are at hand, the training forward also
// writes what the backward step needs. The backward runs over any slice of the time axis and returns the
// gradient flowing into the slice before, so the Python side calls it slice by slice (ops.backward_slices).
// Python's loop paid dispatch overhead on each of five to fifteen elementwise ops per step; here a step is the
// product plus a few passes over each row (benchmarks/KERNELS.md).
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
#include <type_traits>

#include "activations.h"
#include "cells.h"
#include "layernorm_cells.h"
#include "precision.h"

using namespace rnnkit;  // the activations and the cell policies

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
    const Tensor y = product(cast(x, w.scalar_type()), w, packed);
    if (y.scalar_type() == at::kBFloat16 && x.scalar_type() == at::kFloat && y.dim() == 2 && y.is_contiguous()) {
      Tensor out = at::empty(y.sizes(), y.options().dtype(at::kFloat));
      rnnkit::widen_bf16(out, y, bias, false);  // the bias added as the product is widened
      return out;
    }
    Tensor out = cast(y, x.scalar_type());
    return bias.has_value() && bias->defined() ? out.add_(*bias) : out;
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
  if (w.scalar_type() != out.scalar_type() && out.scalar_type() == at::kFloat && w.scalar_type() == at::kBFloat16 &&
      out.is_contiguous()) {  // mixed precision: the bf16 product added as it is widened
    rnnkit::widen_bf16(out, product(cast(x, at::kBFloat16), w, packed), std::nullopt, true);
  } else if (packed || w.scalar_type() != x.scalar_type()) {
    out.add_(product(x, w, packed));
  } else {
    at::addmm_out(out, out, x, w);
  }
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

// ---------------------------------------------------------------- the skeleton

// c of the (h, c) cells: a history C (T+1, B, H) laid out like S (the LayerNorm LSTM's backward reads c_t), or
// two (B, H) buffers used in turn (the LSTM, whose backward needs only its factors, and inference).
template <typename T>
class Memory {
 public:
  Memory(const Tensor& c0, const OptTensor& history, const Steps& steps) : steps_(steps) {
    if (history.has_value() && history->defined()) {
      C_ = *history;
      rows_ = C_.size(1) * C_.size(2);
    } else {
      c_ = c0.contiguous().clone();  // c_{t-1} and c_t in turn
      c_next_ = at::empty_like(c_);
    }
  }
  const T* prev(int64_t t) const {
    return C_.defined() ? C_.data_ptr<T>() + steps_.prev(t) * rows_ : c_.data_ptr<T>();
  }
  T* cur(int64_t t) const { return C_.defined() ? C_.data_ptr<T>() + steps_.cur(t) * rows_ : c_next_.data_ptr<T>(); }
  void advance() {
    if (!C_.defined()) std::swap(c_, c_next_);
  }
  // c after the last step
  Tensor last() const { return C_.defined() ? C_.select(0, steps_.reverse ? 0 : steps_.T).clone() : c_; }

 private:
  Steps steps_;
  Tensor C_, c_, c_next_;
  int64_t rows_ = 0;
};

// The forward: per step the product h_{t-1} W_hh^T (+ bias), then the cell's row function on every row. With
// KEEP every row is computed (its backward factors are needed, with m = 0 they zero its gradient); without, a
// row past its length only keeps its state.
template <typename T, bool KEEP, typename Cell>
void forward_steps(const Cell& cell, Tensor& S, Memory<T>* mem, const T* M, const Steps& steps, const Tensor& w,
                   bool packed, const OptTensor& bias) {
  const int64_t B = S.size(1), H = S.size(2), width = cell.gates();
  T* Sp = S.data_ptr<T>();
  for (int64_t s = 0; s < steps.T; ++s) {
    const int64_t t = steps.at(s);
    const Tensor gh = product(S.select(0, steps.prev(t)), w, packed, bias);  // (B, G*H)
    const T* GH = gh.data_ptr<T>();
    const T* Cp = nullptr;
    T* Cn = nullptr;
    if constexpr (Cell::has_cell) {
      Cp = mem->prev(t);
      Cn = mem->cur(t);
    }
    at::parallel_for(0, B, row_grain(width), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T mb = M ? M[t * B + b] : T(1);
        const T* hp = Sp + (steps.prev(t) * B + b) * H;
        T* hn = Sp + (steps.cur(t) * B + b) * H;
        const T* cp = Cell::has_cell ? Cp + b * H : nullptr;
        T* cn = Cell::has_cell ? Cn + b * H : nullptr;
        if (KEEP || mb != T(0)) cell.template forward_row<KEEP>(t, b, GH + b * width, hp, hn, cp, cn, mb);
        if (mb == T(0)) {  // a row past its length keeps its state
          for (int64_t j = 0; j < H; ++j) hn[j] = hp[j];
          if constexpr (Cell::has_cell)
            for (int64_t j = 0; j < H; ++j) cn[j] = cp[j];
        }
      }
    });
    if constexpr (Cell::has_cell) mem->advance();
  }
}

// Runs the forward over S (T+1, B, H) holding h_{-1}; for (h, c) cells from c0, with c's history written to C
// when given. Returns c after the last step (undefined for h cells).
template <typename T, typename Cell>
Tensor forward_loop(const Cell& cell, Tensor& S, const OptTensor& c0, const OptTensor& C, const OptTensor& m,
                    bool reverse, const Tensor& w, bool packed, const OptTensor& bias, bool keep) {
  const Steps steps{S.size(0) - 1, reverse};
  std::optional<Memory<T>> mem;
  if constexpr (Cell::has_cell) mem.emplace(*c0, C, steps);
  Memory<T>* c = mem ? &*mem : nullptr;
  if (keep)
    forward_steps<T, true>(cell, S, c, mask_ptr<T>(m), steps, w, packed, bias);
  else
    forward_steps<T, false>(cell, S, c, mask_ptr<T>(m), steps, w, packed, bias);
  return mem ? mem->last() : Tensor();
}

// The backward over dy (T, B, H), a slice of the time axis: per step the cell's row function on every row (which
// writes the row's gate gradients, gc in place, and g_{t-1} but for the product), then g_{t-1} += product_rows(t)
// W_hh. S (T+1, B, H) holds the slice's states where the cell's backward reads them (h, or c for the LayerNorm
// LSTM), in S's layout; GC (B, H) is dL/dc for (h, c) cells. Returns the gradient into the slice before, g_{-1}.
template <typename T, typename Cell>
Tensor backward_loop(const Cell& cell, const Tensor& dy, const OptTensor& S, T* GC, const OptTensor& m,
                     bool reverse, const Tensor& w, bool packed, const Tensor& g0) {
  const int64_t Tn = dy.size(0), B = dy.size(1), H = dy.size(2);
  const Steps steps{Tn, reverse};
  const T* Sp = S.has_value() ? S->data_ptr<T>() : nullptr;
  const T* DY = dy.data_ptr<T>();
  const int64_t sT = dy.stride(0), sB = dy.stride(1);  // dy may be a strided view (rows of H contiguous)
  const T* M = mask_ptr<T>(m);
  const int64_t grain = row_grain(std::max(cell.gates(), cell.kept()));
  Tensor g = g0 + dy.select(0, steps.back(0));
  Tensor gn = at::empty_like(g);
  for (int64_t s = 0; s < Tn; ++s) {
    const int64_t t = steps.back(s);
    const T* G = g.data_ptr<T>();
    T* GN = gn.data_ptr<T>();
    const T* next = s + 1 < Tn ? DY + steps.back(s + 1) * sT : nullptr;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* hp = Sp ? Sp + (steps.prev(t) * B + b) * H : nullptr;
        const T* h = Sp ? Sp + (steps.cur(t) * B + b) * H : nullptr;
        cell.backward_row(t, b, hp, h, G + b * H, GC ? GC + b * H : nullptr, next ? next + b * sB : nullptr,
                          GN + b * H, M ? M[t * B + b] : T(1));
      }
    });
    add_product(gn, cell.product_rows(t), w, packed);
    std::swap(g, gn);
  }
  return g;
}

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

// Zoneout (cells.h): f(values) with the zoneout of a cell's n zoned states (h, or h and c), (T, n, B, H) contiguous:
// a bool mask read as const uint8_t* (training; GCC vectorised no row loop that loaded a bool, exp included, which
// cost a quarter of a GRU train step) or a const T* (evaluation weights); a null const void* without zoneout. The
// cell policy takes the pointee type as its zone type Z.
template <typename T, typename F>
void with_zoneout(const OptTensor& z, int64_t numel, F&& f) {
  if (!given(z)) return f(static_cast<const void*>(nullptr));
  check(*z, "zoneout");
  TORCH_CHECK(z->numel() == numel, "rnnkit recurrence: zoneout must have ", numel, " values, got ", z->numel());
  if (z->scalar_type() == at::kBool) return f(reinterpret_cast<const uint8_t*>(z->data_ptr<bool>()));
  TORCH_CHECK(z->scalar_type() == c10::CppTypeToScalarType<T>::value,
              "rnnkit recurrence: zoneout must be bool or the states' dtype, got ", z->scalar_type());
  f(static_cast<const T*>(z->data_ptr<T>()));
}

template <typename P>
using pointee = std::remove_const_t<std::remove_pointer_t<P>>;

// ---------------------------------------------------------------- Elman
// xp (T, B, H) = x_t W_ih^T + b; the backward fills da (T, B, H) and returns g_{-1}. ``act``: 0 tanh, 1 relu,
// 2 identity (cells.h: Act). With zoneout weights (T, B, H) (evaluation), the training forward (``keep``)
// overwrites xp with act', which the backward reads as ``dact``; with masks (training) neither is needed.

// f(std::integral_constant<Act, A>) for the activation numbered ``act``
template <typename F>
void with_activation(int64_t act, F&& f) {
  switch (act) {
    case 0:
      return f(std::integral_constant<Act, Act::Tanh>{});
    case 1:
      return f(std::integral_constant<Act, Act::Relu>{});
    case 2:
      return f(std::integral_constant<Act, Act::Identity>{});
    default:
      TORCH_CHECK(false, "rnnkit elman: act must be 0 (tanh), 1 (relu) or 2 (identity), got ", act);
  }
}

// Mixed precision: xp and da in bfloat16 with S float32; the bias then comes as ``bias`` and is added to the
// step's product (as it is widened), since xp holds the input side alone.
void elman_forward(Tensor xp, Tensor S, OptTensor m, bool reverse, int64_t act, Tensor w, bool packed,
                   OptTensor bias, OptTensor zoneout, bool keep) {
  check(xp, "xp");
  check(S, "S");
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "elman_forward", [&] {
    using T = scalar_t;
    const int64_t B = S.size(1), H = S.size(2);
    auto run = [&](auto* X) {
      using L = std::remove_pointer_t<decltype(X)>;
      with_activation(act, [&](auto a) {
        with_zoneout<T>(zoneout, xp.numel(), [&](auto zo) {
          using Z = pointee<decltype(zo)>;
          const Elman<T, decltype(a)::value, L, Z> cell{.B = B, .H = H, .X = X, .Zo = zo};
          forward_loop<T>(cell, S, {}, {}, m, reverse, w, packed, bias, kept_grad<Z> && keep);
        });
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (xp.scalar_type() == at::kBFloat16) return run(xp.data_ptr<at::BFloat16>());
    }
    run(xp.data_ptr<T>());
  });
}

Tensor elman_backward(Tensor S, Tensor dy, OptTensor m, bool reverse, int64_t act, Tensor w, bool packed,
                      Tensor g0, Tensor da, OptTensor dact, OptTensor zoneout) {
  check(S, "S");
  check(da, "da");
  TORCH_CHECK(!given(dact) || given(zoneout), "rnnkit elman_backward: dact comes with zoneout weights");
  if (given(dact)) {
    check(*dact, "dact");
    TORCH_CHECK(dact->scalar_type() == da.scalar_type() && dact->numel() == da.numel(),
                "rnnkit elman_backward: dact must be like da");
  }
  Tensor g;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "elman_backward", [&] {
    using T = scalar_t;
    const int64_t B = dy.size(1), H = dy.size(2);
    auto run = [&](auto* DA) {
      using L = std::remove_pointer_t<decltype(DA)>;
      L* X = given(dact) ? dact->data_ptr<L>() : nullptr;
      with_activation(act, [&](auto a) {
        with_zoneout<T>(zoneout, da.numel(), [&](auto zo) {
          using Z = pointee<decltype(zo)>;
          TORCH_CHECK(!kept_grad<Z> || X, "rnnkit elman_backward: zoneout weights need dact");
          const Elman<T, decltype(a)::value, L, Z> cell{.B = B, .H = H, .X = X, .da = da, .DA = DA, .Zo = zo};
          g = backward_loop<T>(cell, with_rows(dy), S, nullptr, m, reverse, w, packed, g0);
        });
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (da.scalar_type() == at::kBFloat16) return run(da.data_ptr<at::BFloat16>());
    }
    run(da.data_ptr<T>());
  });
  return g;
}

// ---------------------------------------------------------------- GRU
// A (T, B, 3H) = [gi_n, gi_z, gi_r]; K (T, B, 4H) = [n, z, r, gh_n] for training. The backward fills
// dG (T, B, 4H) = [dn, dz, dr, dgh_n] and returns g_{-1}. Zoneout: (T, B, H).

// Mixed precision: A (the input side without its bias, which comes as b_ih) and dG in bfloat16, S and K float32.
void gru_forward(Tensor A, Tensor S, OptTensor K, OptTensor m, bool reverse, Tensor w, bool packed, OptTensor b_hh,
                 double scale, OptTensor b_ih, OptTensor zoneout) {
  check(A, "A");
  check(S, "S");
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "gru_forward", [&] {
    using T = scalar_t;
    const bool keep = given(K);
    const Tensor bi = given(b_ih) ? b_ih->to(S.scalar_type()).contiguous() : Tensor();
    auto run = [&](auto* Ap) {
      using L = std::remove_pointer_t<decltype(Ap)>;
      with_zoneout<T>(zoneout, A.numel() / 3, [&](auto zo) {
        const GRU<T, L, pointee<decltype(zo)>> cell{.B = S.size(1), .H = S.size(2), .A = Ap,
                                                    .BI = bi.defined() ? bi.data_ptr<T>() : nullptr,
                                                    .K = keep ? K->data_ptr<T>() : nullptr, .inv = T(1) / T(scale),
                                                    .Zo = zo};
        forward_loop<T>(cell, S, {}, {}, m, reverse, w, packed, b_hh, keep);
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (A.scalar_type() == at::kBFloat16) {
        TORCH_CHECK(bi.defined(), "rnnkit gru_forward: a bf16 A needs its input bias b_ih (zeros for none)");
        return run(A.data_ptr<at::BFloat16>());
      }
    }
    run(A.data_ptr<T>());
  });
}

Tensor gru_backward(Tensor K, Tensor S, OptTensor m, Tensor dy, bool reverse, Tensor w, bool packed, Tensor g0,
                    Tensor dG, OptTensor zoneout) {
  check(K, "K");
  check(S, "S");
  check(dG, "dG");
  Tensor g;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "gru_backward", [&] {
    using T = scalar_t;
    const int64_t B = dy.size(1), H = dy.size(2);
    const Tensor dgh = at::empty({B, 3 * H}, dG.options());  // see GRU in cells.h
    auto run = [&](auto* DG, auto* DGH) {
      using L = std::remove_pointer_t<decltype(DG)>;
      with_zoneout<T>(zoneout, dy.numel(), [&](auto zo) {
        const GRU<T, L, pointee<decltype(zo)>> cell{.B = B, .H = H, .K = K.data_ptr<T>(), .DG = DG, .dgh = dgh,
                                                    .DGH = DGH, .Zo = zo};
        g = backward_loop<T>(cell, with_rows(dy), S, nullptr, m, reverse, w, packed, g0);
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (dG.scalar_type() == at::kBFloat16) return run(dG.data_ptr<at::BFloat16>(), dgh.data_ptr<at::BFloat16>());
    }
    run(dG.data_ptr<T>(), dgh.data_ptr<T>());
  });
  return g;
}

// ---------------------------------------------------------------- LSTM
// xp (T, B, 4H) = [i, f, g, o] from the input side; for training it becomes Q and p, F (T, B, H) are filled.
// Returns c at the last step. The backward fills dG (T, B, 4H) = [di, df, dg, do] and returns (gh_{-1}, gc_{-1}).
// Zoneout: (T, 2, B, H), per step h's then c's.

// Mixed precision: xp (and so Q) and dG in bfloat16 with S, c, p, F float32; the bias then comes as ``bias``
// and is added to the step's product (as it is widened), since xp holds the input side alone.
Tensor lstm_forward(Tensor xp, Tensor S, Tensor c0, OptTensor p, OptTensor F, OptTensor m, bool reverse, Tensor w,
                    bool packed, OptTensor bias, OptTensor zoneout) {
  check(xp, "xp");
  check(S, "S");
  Tensor c;
  AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "lstm_forward", [&] {
    using T = scalar_t;
    const bool keep = given(p);
    auto run = [&](auto* X) {
      using L = std::remove_pointer_t<decltype(X)>;
      with_zoneout<T>(zoneout, xp.numel() / 2, [&](auto zo) {
        const LSTM<T, L, pointee<decltype(zo)>> cell{.B = S.size(1), .H = S.size(2), .X = X,
                                                     .P = keep ? p->data_ptr<T>() : nullptr,
                                                     .F = keep ? F->data_ptr<T>() : nullptr, .Zo = zo};
        c = forward_loop<T>(cell, S, c0, {}, m, reverse, w, packed, bias, keep);
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (xp.scalar_type() == at::kBFloat16) return run(xp.data_ptr<at::BFloat16>());
    }
    run(xp.data_ptr<T>());
  });
  return c;
}

std::tuple<Tensor, Tensor> lstm_backward(Tensor Q, Tensor p, Tensor forget, Tensor dy, OptTensor m, bool reverse,
                                         Tensor w, bool packed, Tensor gh0, Tensor gc0, Tensor dG, OptTensor zoneout) {
  check(Q, "Q");
  check(p, "p");
  check(forget, "forget");
  check(dG, "dG");
  TORCH_CHECK(Q.scalar_type() == dG.scalar_type(), "rnnkit lstm_backward: Q and dG must have one dtype");
  std::tuple<Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lstm_backward", [&] {
    using T = scalar_t;
    auto run = [&](auto* X, auto* DG) {
      using L = std::remove_pointer_t<decltype(X)>;
      with_zoneout<T>(zoneout, 2 * dy.numel(), [&](auto zo) {
        const LSTM<T, L, pointee<decltype(zo)>> cell{.B = dy.size(1), .H = dy.size(2), .X = X, .P = p.data_ptr<T>(),
                                                     .F = forget.data_ptr<T>(), .dG = dG, .DG = DG, .Zo = zo};
        Tensor gc = gc0.contiguous().clone();
        Tensor gh = backward_loop<T>(cell, with_rows(dy), {}, gc.data_ptr<T>(), m, reverse, w, packed, gh0);
        out = {gh, gc};
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (Q.scalar_type() == at::kBFloat16) return run(Q.data_ptr<at::BFloat16>(), dG.data_ptr<at::BFloat16>());
    }
    run(Q.data_ptr<T>(), dG.data_ptr<T>());
  });
  return out;
}

// ---------------------------------------------------------------- LayerNorm LSTM
// P (T, B, 4H) = x_t W_ih^T. For training, A (T, B, 4H), C (T+1, B, H, holding c_{-1}) and stats (6, T, B, 1)
// = [mean, rstd] of P, A and k are filled. The gains are those of the scaled rows; bias (4H) = b_ih + b_hh or
// absent. Returns c_T.

// The layer's gains as LNLSTMWeights, zeros for an absent bias
template <typename T>
LNLSTMWeights<T> ln_lstm_weights(const Tensor& gain_ih, const Tensor& bias, const Tensor& gain_hh,
                                 const Tensor& gain_c, const Tensor& shift_c) {
  for (const auto& [t, name] : {std::pair{gain_ih, "gain_ih"}, {bias, "bias"}, {gain_hh, "gain_hh"},
                                {gain_c, "gain_c"}, {shift_c, "shift_c"}})
    check(t, name);
  return {gain_ih.data_ptr<T>(), bias.data_ptr<T>(), gain_hh.data_ptr<T>(), gain_c.data_ptr<T>(),
          shift_c.data_ptr<T>()};
}

Tensor layernorm_lstm_forward(Tensor P, Tensor S, Tensor c0, OptTensor C, OptTensor A, OptTensor stats, OptTensor m,
                              bool reverse, Tensor w, bool packed, Tensor gain_ih, OptTensor bias, Tensor gain_hh,
                              Tensor gain_c, Tensor shift_c, double eps) {
  check(P, "P");
  check(S, "S");
  const bool keep = given(A);
  TORCH_CHECK(!keep || (given(C) && given(stats)), "rnnkit recurrence: training needs A, C and stats");
  if (keep)
    for (const auto& [t, name] : {std::pair{*A, "A"}, {*C, "C"}, {*stats, "stats"}}) check(t, name);
  const int64_t B = S.size(1), H = S.size(2);
  const Tensor a = keep ? *A : at::empty({B, 4 * H}, S.options());  // inference: scratch rows
  const Tensor b = given(bias) ? *bias : at::zeros_like(gain_ih);
  Tensor c;
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "layernorm_lstm_forward", [&] {
    using T = scalar_t;
    const LayerNormLSTM<T> cell{.B = B, .H = H, .P = P.data_ptr<T>(), .A = a.data_ptr<T>(),
                                .stats = keep ? stats->data_ptr<T>() : nullptr, .st = P.size(0) * B,
                                .w = ln_lstm_weights<T>(gain_ih, b, gain_hh, gain_c, shift_c), .eps = T(eps)};
    c = forward_loop<T>(cell, S, c0, keep ? C : OptTensor(), m, reverse, w, packed, {}, keep);
  });
  return c;
}

// P, C (T+1, B, H), A and stats (6, T, B, 1: a slice of the forward's, any stride between statistics) of a slice;
// the plain gains. Fills dP and dA (T, B, 4H), adds [da_ih, da_hh, db (4H each), da_c, db_c (H each)] into sums
// (14H); returns (gh_{-1}, gc_{-1}).
std::tuple<Tensor, Tensor> layernorm_lstm_backward(Tensor P, Tensor C, Tensor A, Tensor stats, Tensor dy, OptTensor m,
                                                   bool reverse, Tensor w, bool packed, Tensor gain_ih,
                                                   OptTensor bias, Tensor gain_hh, Tensor gain_c, Tensor shift_c,
                                                   Tensor gh0, Tensor gc0, Tensor dP, Tensor dA, Tensor sums) {
  for (const auto& [t, name] : {std::pair{P, "P"}, {C, "C"}, {A, "A"}, {dP, "dP"}, {dA, "dA"}, {sums, "sums"}})
    check(t, name);
  TORCH_CHECK(stats.dim() == 4 && stats.size(0) == 6 && stats[0].is_contiguous(),
              "rnnkit recurrence: stats must be (6, T, B, 1) with contiguous statistics");
  const int64_t B = dy.size(1), H = dy.size(2);
  const Tensor b = given(bias) ? *bias : at::zeros_like(gain_ih);
  // the gradient sums of each thread, added into sums at the end
  const Tensor part = at::zeros({at::get_num_threads(), 14 * H}, dy.options());
  std::tuple<Tensor, Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "layernorm_lstm_backward", [&] {
    using T = scalar_t;
    const LayerNormLSTM<T> cell{.B = B, .H = H, .P = P.data_ptr<T>(), .A = A.data_ptr<T>(),
                                .stats = stats.data_ptr<T>(), .st = stats.stride(0),
                                .w = ln_lstm_weights<T>(gain_ih, b, gain_hh, gain_c, shift_c), .DP = dP.data_ptr<T>(),
                                .dA = dA, .DA = dA.data_ptr<T>(), .acc = part.data_ptr<T>()};
    Tensor gc = gc0.contiguous().clone();
    Tensor gh = backward_loop<T>(cell, with_rows(dy), C, gc.data_ptr<T>(), m, reverse, w, packed, gh0);
    out = {gh, gc};
  });
  sums.add_(part.sum(0));
  return out;
}

// ---------------------------------------------------------------- LayerNorm GRU
// P (T, B, 3H) = x_t W_ih^T with the gate rows (n, z, r); gain_ih, bias_ih the same, gain_hh, bias_hh (z, r, n),
// biases absent or (3H). For training, A (T, B, 3H) and stats (4, T, B, 1) = [mean, rstd] of P and A are filled.

// The layer's gains as LNGRUWeights, zeros for absent biases
template <typename T>
LNGRUWeights<T> ln_gru_weights(const Tensor& gain_ih, const Tensor& bias_ih, const Tensor& gain_hh,
                               const Tensor& bias_hh) {
  for (const auto& [t, name] : {std::pair{gain_ih, "gain_ih"}, {bias_ih, "bias_ih"}, {gain_hh, "gain_hh"},
                                {bias_hh, "bias_hh"}})
    check(t, name);
  return {gain_ih.data_ptr<T>(), bias_ih.data_ptr<T>(), gain_hh.data_ptr<T>(), bias_hh.data_ptr<T>()};
}

void layernorm_gru_forward(Tensor P, Tensor S, OptTensor A, OptTensor stats, OptTensor m, bool reverse, Tensor w,
                           bool packed, Tensor gain_ih, OptTensor bias_ih, Tensor gain_hh, OptTensor bias_hh,
                           double eps) {
  check(P, "P");
  check(S, "S");
  const bool keep = given(A);
  TORCH_CHECK(!keep || given(stats), "rnnkit recurrence: training needs A and stats");
  if (keep)
    for (const auto& [t, name] : {std::pair{*A, "A"}, {*stats, "stats"}}) check(t, name);
  const int64_t B = S.size(1), H = S.size(2);
  const Tensor a = keep ? *A : at::empty({B, 3 * H}, S.options());  // inference: scratch rows
  const Tensor b_ih = given(bias_ih) ? *bias_ih : at::zeros_like(gain_ih);
  const Tensor b_hh = given(bias_hh) ? *bias_hh : at::zeros_like(gain_hh);
  AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "layernorm_gru_forward", [&] {
    using T = scalar_t;
    const LayerNormGRU<T> cell{.B = B, .H = H, .P = P.data_ptr<T>(), .A = a.data_ptr<T>(),
                               .stats = keep ? stats->data_ptr<T>() : nullptr, .st = P.size(0) * B,
                               .w = ln_gru_weights<T>(gain_ih, b_ih, gain_hh, b_hh), .eps = T(eps)};
    forward_loop<T>(cell, S, {}, {}, m, reverse, w, packed, {}, keep);
  });
}

// P, S, A and stats (4, T, B, 1: a slice of the forward's) of a slice; the plain gains. Fills dP and dA (T, B, 3H),
// adds [da_ih, db_ih, da_hh, db_hh] (3H each) into sums (12H); returns g_{-1}.
Tensor layernorm_gru_backward(Tensor P, Tensor S, Tensor A, Tensor stats, OptTensor m, Tensor dy, bool reverse,
                              Tensor w, bool packed, Tensor gain_ih, OptTensor bias_ih, Tensor gain_hh,
                              OptTensor bias_hh, Tensor g0, Tensor dP, Tensor dA, Tensor sums) {
  for (const auto& [t, name] : {std::pair{P, "P"}, {S, "S"}, {A, "A"}, {dP, "dP"}, {dA, "dA"}, {sums, "sums"}})
    check(t, name);
  TORCH_CHECK(stats.dim() == 4 && stats.size(0) == 4 && stats[0].is_contiguous(),
              "rnnkit recurrence: stats must be (4, T, B, 1) with contiguous statistics");
  const int64_t B = dy.size(1), H = dy.size(2);
  const Tensor b_ih = given(bias_ih) ? *bias_ih : at::zeros_like(gain_ih);
  const Tensor b_hh = given(bias_hh) ? *bias_hh : at::zeros_like(gain_hh);
  const Tensor part = at::zeros({at::get_num_threads(), 12 * H}, dy.options());  // each thread's sums
  Tensor g;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "layernorm_gru_backward", [&] {
    using T = scalar_t;
    const LayerNormGRU<T> cell{.B = B, .H = H, .P = P.data_ptr<T>(), .A = A.data_ptr<T>(),
                               .stats = stats.data_ptr<T>(), .st = stats.stride(0),
                               .w = ln_gru_weights<T>(gain_ih, b_ih, gain_hh, b_hh), .DP = dP.data_ptr<T>(),
                               .dA = dA, .DA = dA.data_ptr<T>(), .acc = part.data_ptr<T>()};
    g = backward_loop<T>(cell, with_rows(dy), S, nullptr, m, reverse, w, packed, g0);
  });
  sums.add_(part.sum(0));
  return g;
}

}  // namespace

TORCH_LIBRARY(rnnkit, m) {
  m.def("elman_forward", &elman_forward);
  m.def("elman_backward", &elman_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("layernorm_lstm_forward", &layernorm_lstm_forward);
  m.def("layernorm_lstm_backward", &layernorm_lstm_backward);
  m.def("layernorm_gru_forward", &layernorm_gru_forward);
  m.def("layernorm_gru_backward", &layernorm_gru_backward);
}
