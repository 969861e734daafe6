// Element types of tensors in a .itl file. The numeric values are the file's int32 enum
// (format/itera.fbs `DType`) and never change. Block formats are laid out in format/quant_blocks.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace itera {

enum class DType : int32_t { f32 = 0, f16 = 1, q8_0 = 2, q4_0 = 3, nf4 = 4, q3_0 = 5, q2_0 = 6 };

// Order of a tensor's blocks in its bytes (format/itera.fbs `Layout`). rows16 interleaves the
// blocks of each whole group of 16 rows (format/quant_blocks.h) for the matrix-vector kernels, the
// last rows % 16 rows following row_major; it holds the same bytes, reordered, and needs an fp32,
// fp16, q4_0 or q8_0 matrix of at least 16 rows.
enum class Layout : int8_t { row_major = 0, rows16 = 1 };
constexpr int kRows16 = 16;

std::string_view dtype_name(DType dtype);             // "fp32", "fp16", "q8", "q4", "nf4", "q3", "q2"
bool parse_dtype(std::string_view name, DType* out);  // accepts the names above
bool dtype_known(int32_t value);
bool is_quantized(DType dtype);         // a block format
int dtype_block(DType dtype);           // elements per block (1 for fp32 / fp16)
size_t dtype_block_bytes(DType dtype);  // bytes per block (per element for fp32 / fp16)
// Bytes of one row of `cols` elements: whole blocks, the last one padded.
size_t dtype_row_bytes(DType dtype, int64_t cols);
std::string_view layout_name(Layout layout);  // "row_major", "rows16"
bool parse_layout(std::string_view name, Layout* out);
// Whether a tensor of this dtype and shape may take the layout (the kernels ask per product, so it
// builds no string), and when not, why not (empty when it may).
bool layout_allows(Layout layout, DType dtype, std::span<const int64_t> shape);
std::string layout_refusal(Layout layout, DType dtype, std::span<const int64_t> shape);
// Bytes of a tensor: rows of its last dimension (a scalar is one row of one element). Throws
// itera::Error on overflow.
size_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape);

}  // namespace itera
