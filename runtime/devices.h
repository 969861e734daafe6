// Choosing a backend by device: the one place that links the CPU and the CUDA backends together.
// The converter does not include this (it runs its models on the CPU backend directly), so it
// does not link the CUDA code.
#pragma once

#include <memory>
#include <string>

#include "runtime/backend.h"
#include "runtime/model.h"

namespace itera {

// A backend for options.device. cuda: throws DeviceUnavailable without a usable GPU (or in a
// build without CUDA) and itera::Error for a model the kernels cannot run. automatic: the GPU when
// it can run the model, else the CPU.
std::unique_ptr<Backend> make_backend(const Model& model, const BackendOptions& options);

// Whether make_backend could use `device` at all (cpu and automatic: always); otherwise *why says why.
bool device_available(Device device, std::string* why, bool* not_built = nullptr);

}  // namespace itera
