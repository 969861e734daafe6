// The CUDA backend behind the runtime's interface: a loaded Model as kernels_cuda/'s plain weight
// descriptors, token ids as embedding rows, and the Runner (kernels_cuda/runner.h) that uploads and
// launches (docs/cuda.md).
#pragma once

#include <memory>

#include "kernels_cuda/plan.h"
#include "kernels_cuda/runner.h"
#include "runtime/backend.h"
#include "runtime/model.h"

namespace itera {

// The model's weights as kernel structs, pointing into the model's mapping. Throws itera::Error
// naming the first tensor stored in a dtype the kernels do not read (q3, q2).
void build_host_model(const Model& model, cuda::HostModel* out);

// Throws DeviceUnavailable (common/error.h) without a usable GPU or in a build without CUDA, itera::Error for a
// model the kernels cannot run. ITERA_CUDA_EMULATE=1 runs the kernels on host threads (tests).
std::unique_ptr<Backend> make_cuda_backend(const Model& model, const BackendOptions& options);
// The same with the runner's options whole (tests: emulation limits); max_seqs is the slot count.
std::unique_ptr<Backend> make_cuda_backend(const Model& model, const cuda::RunnerOptions& options);

}  // namespace itera
