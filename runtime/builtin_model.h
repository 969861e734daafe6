// The shipped model (models/), converted at build time and linked into itera-run.
#pragma once

#include <cstddef>

extern "C" {
extern const unsigned char itera_builtin_model[];
extern const size_t itera_builtin_model_size;
}
