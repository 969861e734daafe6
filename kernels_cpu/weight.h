// A weight as the kernels see it: a typed view into the mapped .itl file. Nothing is copied or
// repacked at load; the kernel converts each element as it reads it.
#pragma once

#include <cstdint>

#include "format/dtype.h"

namespace itera {

struct Weight {
    DType dtype = DType::f32;
    int32_t rows = 0;  // [rows, cols]; a vector is [1, cols]
    int32_t cols = 0;
    const void* data = nullptr;
    Layout layout = Layout::row_major;  // rows16: fp32 / fp16 / q4_0 / q8_0, 16 rows interleaved (quant_blocks.h)
};

// Row r's bytes as row_major stores them (dtype_row_bytes(w.dtype, w.cols)): a pointer into w.data,
// or, for rows16, into `scratch` (that many bytes) after gathering the row there.
const uint8_t* weight_row(const Weight& w, int32_t r, uint8_t* scratch);

}  // namespace itera
