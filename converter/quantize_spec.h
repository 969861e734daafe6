// Lowers a converted FP32 ModelSpec to the stored dtypes a user asked for: the per-tensor dtype
// policy (--quant, --keep), and round-to-nearest or calibrated (GPTQ)
// quantization of the block formats. Records what it did for --report.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "converter/calibration.h"
#include "format/model_spec.h"

namespace itera {

struct QuantOptions {
    DType base = DType::f32;                          // --quant: the matrices' dtype
    std::map<std::string, DType> dtypes;              // per tensor (--precision, --target-size): wins over base
    std::vector<std::pair<std::string, DType>> keep;  // --keep GLOB=dtype, later rules win over all
    bool trim_vocab = true;                           // drop rows no tokenizer string can produce
    Layout layout = Layout::rows16;  // --layout: of the fp32 / fp16 / q4 / q8 matrices that can take it
};

struct TensorReport {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype = DType::f32;
    size_t bytes = 0;
    double rms_error_rtn = 0;          // ||W - Q|| / ||W|| with round-to-nearest (fp16: its rounding; fp32: 0)
    double rms_error_calibrated = -1;  // the same with GPTQ (-1: not calibrated)
    double output_error_rtn = -1;      // trace((W-Q) H (W-Q)^T) / trace(W H W^T) on the calibration inputs
    double output_error_calibrated = -1;
};

// Tensors the runtime reads element by element rather than through a matrix product or a row
// lookup (vectors, conv weights, C): fp32 or fp16 only.
bool read_elementwise(const std::string& name, size_t rank);

// The dtype each tensor is stored in. Throws itera::Error for a block format on a tensor the
// runtime reads element-wise (LayerNorms, biases, A_log, D, conv weights, C). B is a matrix
// product: q8 when the base is a block format of fewer bits (q4, nf4, q3, q2), else the base. options.dtypes, then
// options.keep, override.
DType choose_dtype(const std::string& name, size_t rank, const QuantOptions& options);

// Sets every tensor's dtype and, for block formats, its packed bytes: calibrated when `stats`
// has the tensor's input statistics, round-to-nearest otherwise.
std::vector<TensorReport> quantize_spec(ModelSpec& spec, const QuantOptions& options,
                                        const std::map<std::string, ActivationStats>* stats);

// Sets every tensor's layout: `layout` for the fp32, fp16, q4 and q8 matrices of at least 16 rows that
// the runtime multiplies (projections, experts, router, the untied head, the tied embedding, which
// is the head too), row_major for the rest (position and untied embeddings: row lookups only; C:
// read element by element into a table at load).
void choose_layouts(ModelSpec& spec, Layout layout);

}  // namespace itera
