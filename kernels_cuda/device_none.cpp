// The device side of a build without the CUDA toolkit (no nvcc at configure time, or
// -Dgpu=disabled): there is no device to run on, and the backend says so.
#include "kernels_cuda/executor.h"

namespace itera::cuda {

bool built_with_cuda() { return false; }

std::unique_ptr<Executor> make_device_executor(bool, std::string* why) {
    *why = "built without CUDA support (no nvcc when meson configured the build, or -Dgpu=disabled)";
    return nullptr;
}

}  // namespace itera::cuda
