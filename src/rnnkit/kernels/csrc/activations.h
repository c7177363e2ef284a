// The activations the C++ loops share (recurrence.cpp, step.cpp): each is one exp.
#pragma once

#include <cmath>

namespace rnnkit {

// exp's argument is held in [-80, 80]. The library is built with -ffast-math, which assumes there are no
// infinities: an exp that overflows (a gate saturated past |a| = 88 in float32) then gave NaN instead of 0 or 1.
// At +-80 float32's sigmoid is already 0 or 1 to within 2e-35, so the clamp changes no result that was right.
template <typename T>
inline T exp_arg(T a) {
  return a < T(-80) ? T(-80) : (a > T(80) ? T(80) : a);
}

template <typename T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-exp_arg(a)));
}

// tanh(a) from a2 = 2a
template <typename T>
inline T tanh2(T a2) {
  return T(2) / (T(1) + std::exp(-exp_arg(a2))) - T(1);
}

}  // namespace rnnkit
