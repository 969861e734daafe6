#include "server/api_error.h"

#include <nlohmann/json.hpp>

namespace itera::server {

const char* ApiError::type() const {
    switch (status_) {
        case 401:
            return "authentication_error";
        case 404:
            return "not_found_error";
        case 503:
            return "unavailable_error";
        default:
            return status_ >= 500 ? "server_error" : "invalid_request_error";
    }
}

std::string ApiError::body() const {
    // Invalid UTF-8 a client sent (quoted in a message) is replaced, never a throw here.
    return nlohmann::json{{"error", {{"message", what()}, {"type", type()}, {"code", code_}}}}.dump(
        -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace itera::server
