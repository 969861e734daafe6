// A completion request as the scheduler needs it: prompt ids, sampling parameters and stops,
// parsed and checked from OpenAI's /v1/completions JSON. Anything wrong is an ApiError (400)
// naming the field, so nothing unchecked reaches the batch.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "itera.h"
#include "server/served_model.h"

namespace itera::server {

struct RequestLimits {
    int32_t max_tokens = 1024;         // the most tokens one request may ask for
    int32_t max_prompt_tokens = 4096;  // the longest prompt, in tokens
    int32_t default_max_tokens = 16;   // when the request does not say (OpenAI's default)
};

struct CompletionRequest {
    std::vector<int32_t> prompt;  // token ids, at least one
    int32_t max_tokens = 16;      // 0..limits.max_tokens
    itera_sampler_params sampling = itera_sampler_default_params();
    std::vector<std::string> stop;  // up to 4 non-empty strings: generation ends before the first
    bool stream = false;            // server-sent events
    bool include_usage = false;     // stream_options.include_usage: a last chunk with the usage
    bool echo = false;              // the prompt's text before the completion
};

// Parses a /v1/completions body. `seed` is used when the request gives none. Throws ApiError.
CompletionRequest parse_completion_request(std::string_view body, const ServedModel& model, const RequestLimits& limits,
                                           uint64_t seed);

}  // namespace itera::server
