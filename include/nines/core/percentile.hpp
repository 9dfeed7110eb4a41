// Percentiles of a measured sample, computed one way by every benchmark and demo so that their
// p50/p99 lines compare (with each other and with the peers in bench/peers/, which use the same
// method).
//
// Method: nearest rank on the sample sorted in ascending order. For n values and p in [0, 100],
// the p-th percentile is the value of rank ceil(p * n / 100) (ranks count from 1), rank 0 being
// taken as 1. So the result is always a value of the sample (never interpolated between two);
// p = 0 gives the smallest value, p = 100 the largest, and p50 of an even count the lower of the
// two middle values. p below 0 (or NaN) counts as 0, above 100 as 100.
// An empty sample gives T{} (0 for numbers and durations): a benchmark that measured nothing
// prints 0 rather than reading out of bounds; it reports the failure through its own counters.
//
// Header-only and standard-library-only on purpose: bench/peers/runtime/run compiles the CAF
// peer with a bare g++ command line that only adds include/ to the include path.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

namespace nines {

// `sorted` must be in ascending order (std::sort it once, then ask for several percentiles).
template <class T>
T percentile_of_sorted(const std::vector<T>& sorted, double p) {
  if (sorted.empty()) return T{};
  if (!(p > 0)) p = 0;
  if (p > 100) p = 100;
  const double n = static_cast<double>(sorted.size());
  // p * n first: for whole p it is an exact integer, so the division by 100 lands exactly on a
  // whole rank when there is one (p / 100 * n can come out a hair above it and ceil one too far).
  const auto rank = static_cast<std::size_t>(std::ceil(p * n / 100.0));
  if (rank <= 1) return sorted.front();
  return rank >= sorted.size() ? sorted.back() : sorted[rank - 1];
}

}  // namespace nines
