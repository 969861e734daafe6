#include "format/dtype.h"

#include <cstdint>
#include <string>

#include "common/error.h"
#include "format/quant_blocks.h"

namespace itera {

namespace {

constexpr DType kAll[] = {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0};

bool rows16_dtype(DType dtype) {
    return dtype == DType::f32 || dtype == DType::f16 || dtype == DType::q4_0 || dtype == DType::q8_0;
}

}  // namespace

std::string_view dtype_name(DType dtype) {
    switch (dtype) {
        case DType::f32:
            return "fp32";
        case DType::f16:
            return "fp16";
        case DType::q8_0:
            return "q8";
        case DType::q4_0:
            return "q4";
        case DType::nf4:
            return "nf4";
        case DType::q3_0:
            return "q3";
        case DType::q2_0:
            return "q2";
    }
    return "unknown";
}

bool parse_dtype(std::string_view name, DType* out) {
    for (DType dtype : kAll) {
        if (name == dtype_name(dtype)) {
            *out = dtype;
            return true;
        }
    }
    return false;
}

bool dtype_known(int32_t value) { return value >= 0 && value <= static_cast<int32_t>(DType::q2_0); }

bool is_quantized(DType dtype) {
    return dtype == DType::q8_0 || dtype == DType::q4_0 || dtype == DType::nf4 || dtype == DType::q3_0 ||
           dtype == DType::q2_0;
}

int dtype_block(DType dtype) {
    switch (dtype) {
        case DType::q8_0:
            return kQ8Block;
        case DType::q4_0:
            return kQ4Block;
        case DType::nf4:
            return kNf4Block;
        case DType::q3_0:
            return kQ3Block;
        case DType::q2_0:
            return kQ2Block;
        default:
            return 1;
    }
}

size_t dtype_block_bytes(DType dtype) {
    switch (dtype) {
        case DType::f32:
            return 4;
        case DType::f16:
            return 2;
        case DType::q8_0:
            return sizeof(BlockQ8);
        case DType::q4_0:
            return sizeof(BlockQ4);
        case DType::nf4:
            return sizeof(BlockNf4);
        case DType::q3_0:
            return sizeof(BlockQ3);
        case DType::q2_0:
            return sizeof(BlockQ2);
    }
    throw Error("unknown dtype " + std::to_string(static_cast<int32_t>(dtype)));
}

std::string_view layout_name(Layout layout) {
    switch (layout) {
        case Layout::row_major:
            return "row_major";
        case Layout::rows16:
            return "rows16";
    }
    return "unknown";
}

bool parse_layout(std::string_view name, Layout* out) {
    for (Layout layout : {Layout::row_major, Layout::rows16}) {
        if (name == layout_name(layout)) {
            *out = layout;
            return true;
        }
    }
    return false;
}

bool layout_allows(Layout layout, DType dtype, std::span<const int64_t> shape) {
    switch (layout) {
        case Layout::row_major:
            return true;
        case Layout::rows16:
            return rows16_dtype(dtype) && shape.size() == 2 && shape[0] >= kRows16;
    }
    return false;
}

std::string layout_refusal(Layout layout, DType dtype, std::span<const int64_t> shape) {
    if (layout_allows(layout, dtype, shape)) return "";
    if (layout != Layout::rows16) return "unknown layout " + std::to_string(static_cast<int32_t>(layout));
    if (!rows16_dtype(dtype))
        return "layout rows16 needs dtype fp32, fp16, q4 or q8, not " + std::string(dtype_name(dtype));
    return "layout rows16 needs a matrix of at least 16 rows";
}

size_t dtype_row_bytes(DType dtype, int64_t cols) {
    const int64_t block = dtype_block(dtype);
    return static_cast<size_t>((cols + block - 1) / block) * dtype_block_bytes(dtype);
}

size_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape) {
    // Callers bound every dimension and the element count (< 2^31) first, so this cannot overflow.
    const int64_t cols = shape.empty() ? 1 : shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) rows *= shape[i];
    if (cols < 0 || rows < 0) throw Error("negative tensor dimension");
    return static_cast<size_t>(rows) * dtype_row_bytes(dtype, cols);
}

}  // namespace itera
