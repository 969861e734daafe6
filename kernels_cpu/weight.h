// A weight as the kernels see it: a typed view into the mapped .itl file. Nothing is copied or
// repacked at load; the kernel converts each element as it reads it.
#pragma once

#include <cstdint>

#include "format/dtype.h"

namespace itera {

struct Weight {
    DType dtype = DType::f32;
    int32_t rows = 0;  // [rows, cols] row-major; a vector is [1, cols]
    int32_t cols = 0;
    const void* data = nullptr;
};

}  // namespace itera
