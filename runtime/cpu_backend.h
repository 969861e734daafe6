// The CPU backend: Forward (runtime/forward.h) over the slots' states in host memory. A run's
// one-token spans (a batch's decode step) go through the model together as one block of rows; each
// longer span (a prompt's prefill, a slid window) runs on its own. With threads > 1 the spans are
// split into contiguous ranges, one per thread, each with its own Forward; threads never split a
// single matrix product.
#pragma once

#include <memory>

#include "runtime/backend.h"
#include "runtime/model.h"

namespace itera {

// Throws itera::Error for slots outside 1..2^20 or threads outside 1..1024.
std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options);

}  // namespace itera
