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

}  // namespace itera
