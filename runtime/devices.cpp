#include "runtime/devices.h"

#include "kernels_cuda/executor.h"
#include "kernels_cuda/runner.h"
#include "runtime/cpu_backend.h"
#include "runtime/cuda_backend.h"

namespace itera {

const char* device_name(Device device) {
    switch (device) {
        case Device::cpu:
            return "cpu";
        case Device::cuda:
            return "cuda";
        case Device::automatic:
            return "auto";
    }
    return "?";
}

Device parse_device(const std::string& name) {
    if (name == "cpu") return Device::cpu;
    if (name == "cuda") return Device::cuda;
    if (name == "auto") return Device::automatic;
    throw Error("unknown device '" + name + "' (expected cpu, cuda or auto)");
}

std::unique_ptr<Backend> make_backend(const Model& model, const BackendOptions& options) {
    switch (options.device) {
        case Device::cpu:
            return make_cpu_backend(model, options);
        case Device::cuda:
            return make_cuda_backend(model, options);
        case Device::automatic:
            try {
                return make_cuda_backend(model, options);
            } catch (const Error&) {  // no GPU, or a model it cannot run (q3, q2)
                return make_cpu_backend(model, options);
            }
    }
    throw Error("unknown device");
}

bool device_available(Device device, std::string* why, bool* not_built) {
    if (not_built) *not_built = false;
    if (device != Device::cuda || cuda::emulated_by_environment()) return true;
    if (cuda::available(why)) return true;
    if (not_built) *not_built = !cuda::built_with_cuda();
    return false;
}

}  // namespace itera
