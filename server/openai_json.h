// The bodies of OpenAI's completion API: a completion, the chunks of a streamed one as
// server-sent events, the model list.
#pragma once

#include <cstdint>
#include <string>

namespace itera::server {

// What every chunk and the completion of one request share.
struct CompletionHead {
    std::string id;     // "cmpl-..."
    int64_t created;    // Unix seconds
    std::string model;  // the served model's name
};

struct Usage {
    int64_t prompt_tokens = 0, completion_tokens = 0;
};

// {"id", "object": "text_completion", "created", "model", "choices": [{"text", "index": 0,
// "logprobs": null, "finish_reason"}], "usage": {...}}
std::string completion_json(const CompletionHead& head, const std::string& text, const std::string& finish_reason,
                            const Usage& usage);
// One "data: {...}\n\n" event of a stream: a piece of text, or (finish_reason not empty) the last
// choice chunk.
std::string stream_event(const CompletionHead& head, const std::string& text, const std::string& finish_reason);
// The event with the usage and no choices (stream_options.include_usage).
std::string usage_event(const CompletionHead& head, const Usage& usage);
// Any JSON text as an event ("data: [DONE]" ends a stream; an error object ends a failed one).
std::string sse_event(const std::string& data);
// GET /v1/models
std::string models_json(const std::string& model, int64_t created);

}  // namespace itera::server
