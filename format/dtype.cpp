#include "format/dtype.h"

#include <cstdint>
#include <string>

#include "common/error.h"

namespace itera {

std::string_view dtype_name(DType dtype) {
    switch (dtype) {
        case DType::f32:
            return "fp32";
        case DType::f16:
            return "fp16";
    }
    return "unknown";
}

bool parse_dtype(std::string_view name, DType* out) {
    for (DType dtype : {DType::f32, DType::f16}) {
        if (name == dtype_name(dtype)) {
            *out = dtype;
            return true;
        }
    }
    return false;
}

size_t dtype_bytes(DType dtype, size_t elements) {
    const size_t width = dtype == DType::f32 ? 4 : dtype == DType::f16 ? 2 : 0;
    if (width == 0) throw Error("unknown dtype " + std::to_string(static_cast<int32_t>(dtype)));
    if (elements > SIZE_MAX / width) throw Error("tensor of " + std::to_string(elements) + " elements is too large");
    return elements * width;
}

}  // namespace itera
