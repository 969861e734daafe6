// The one error type inside Itera: a message for the user. CLIs print it as "error: <message>"
// and exit 1; the C API maps it to an integer code.
#pragma once

#include <stdexcept>
#include <string>

namespace itera {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A device that cannot be used: no usable GPU, or a library built without CUDA (not_built). The C
// API gives each its own code.
class DeviceUnavailable : public Error {
public:
    DeviceUnavailable(const std::string& message, bool not_built) : Error(message), not_built_(not_built) {}
    bool not_built() const { return not_built_; }

private:
    bool not_built_;
};

}  // namespace itera
