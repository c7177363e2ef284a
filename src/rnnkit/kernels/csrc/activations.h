// The activations the C++ loops share (recurrence.cpp, step.cpp): each is one exp.
#pragma once

#include <cmath>

namespace rnnkit {

template <typename T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

// tanh(a) from a2 = 2a
template <typename T>
inline T tanh2(T a2) {
  return T(2) / (T(1) + std::exp(-a2)) - T(1);
}

}  // namespace rnnkit
