// An error answered to an HTTP client: the status, a short machine-readable code and a message,
// sent as OpenAI's {"error": {"message", "type", "code"}} (the type follows from the status).
#pragma once

#include <stdexcept>
#include <string>

namespace itera::server {

class ApiError : public std::runtime_error {
public:
    ApiError(int status, std::string code, const std::string& message)
        : std::runtime_error(message), status_(status), code_(std::move(code)) {}
    int status() const { return status_; }
    const std::string& code() const { return code_; }
    // OpenAI's error type for the status: invalid_request_error, authentication_error, ...
    const char* type() const;
    // {"error": {"message": ..., "type": ..., "code": ...}}
    std::string body() const;

private:
    int status_;
    std::string code_;
};

}  // namespace itera::server
