// The kernel benches' timer: median nanoseconds per call of fn over `repeats` timed loops, each
// loop long enough (about 50 us) for the clock's resolution not to matter.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

namespace itera::bench {

template <class Fn>
double median_ns(Fn fn, int repeats) {
    using clock = std::chrono::steady_clock;
    int loop = 1;
    for (;;) {  // grow the loop until it takes 50 us
        const auto t0 = clock::now();
        for (int i = 0; i < loop; i++) fn();
        if (clock::now() - t0 > std::chrono::microseconds(50) || loop >= (1 << 20)) break;
        loop *= 2;
    }
    std::vector<double> ns(static_cast<size_t>(repeats));
    for (double& t : ns) {
        const auto t0 = clock::now();
        for (int i = 0; i < loop; i++) fn();
        t = std::chrono::duration<double, std::nano>(clock::now() - t0).count() / loop;
    }
    std::nth_element(ns.begin(), ns.begin() + repeats / 2, ns.end());
    return ns[static_cast<size_t>(repeats / 2)];
}

}  // namespace itera::bench
