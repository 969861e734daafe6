// Element types of tensors in a .itl file. The numeric values are the file's int32 enum
// (format/itera.fbs `DType`) and never change; quantized block formats come later.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace itera {

enum class DType : int32_t { f32 = 0, f16 = 1 };

std::string_view dtype_name(DType dtype);        // "fp32", "fp16"
bool parse_dtype(std::string_view name, DType* out);  // accepts the names above
size_t dtype_bytes(DType dtype, size_t elements);  // bytes that many elements occupy

}  // namespace itera
