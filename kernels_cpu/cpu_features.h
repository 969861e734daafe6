// What the CPU (and the OS, which must save the wider registers) supports, detected once.
#pragma once

namespace itera {

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
    bool avxvnni = false;
};

const CpuFeatures& cpu_features();

}  // namespace itera
