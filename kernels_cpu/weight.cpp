#include "kernels_cpu/weight.h"

#include "format/quant_blocks.h"

namespace itera {

const uint8_t* weight_row(const Weight& w, int32_t r, uint8_t* scratch) {
    if (w.layout == Layout::row_major)
        return static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r) * dtype_row_bytes(w.dtype, w.cols);
    row_from_rows16(w.dtype, static_cast<const uint8_t*>(w.data), w.rows, w.cols, r, scratch);
    return scratch;
}

}  // namespace itera
