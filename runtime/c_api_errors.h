// How the C APIs (itera.h, and itera_convert.h over the converter) report failure: every entry
// point runs its body in guarded(), which turns any exception into an ITERA_ERR_* code and the
// thread's last-error message. itera::Error -> the code that entry point documents (a device that
// cannot be used -> NO_DEVICE / NO_CUDA), std::bad_alloc -> OUT_OF_MEMORY, anything else -> INTERNAL.
//
// Everything here has internal linkage: each library's one C API file that includes it gets its
// own message buffer (libitera's itera_last_error and libitera_convert's are apart).
#pragma once

#include <cstdarg>
#include <cstdio>
#include <new>
#include <stdexcept>

#include "common/error.h"
#include "itera.h"

namespace {

// A fixed buffer: recording an error never allocates, so it cannot fail itself.
thread_local char last_error[1024] = "";

int fail(int code, const char* message) {
    std::snprintf(last_error, sizeof last_error, "%s", message);
    return code;
}

// The same, formatted into that buffer: the messages that name a value build no std::string, so
// an error path cannot throw std::bad_alloc out of an entry point.
[[gnu::format(printf, 2, 3)]] int failf(int code, const char* format, ...) {
    va_list args;
    va_start(args, format);
    std::vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return code;
}

// Runs `body` (which returns an error code) and maps what it throws; `error_code` is the code of
// an itera::Error in this entry point.
template <class Body>
int guarded(int error_code, Body&& body) noexcept {
    try {
        return body();
    } catch (const itera::DeviceUnavailable& e) {
        return fail(e.not_built() ? ITERA_ERR_NO_CUDA : ITERA_ERR_NO_DEVICE, e.what());
    } catch (const itera::Error& e) {
        return fail(error_code, e.what());
    } catch (const std::bad_alloc&) {
        return fail(ITERA_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception& e) {
        return failf(ITERA_ERR_INTERNAL, "internal error: %s", e.what());
    } catch (...) {
        return fail(ITERA_ERR_INTERNAL, "internal error: unknown exception");
    }
}

}  // namespace
