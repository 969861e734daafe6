#include "server/openai_json.h"

#include <nlohmann/json.hpp>

namespace itera::server {

namespace {

using json = nlohmann::ordered_json;  // fields in OpenAI's order

// Pieces and stop strings are valid UTF-8 and text is cut only where a stop string starts, at a
// character boundary; replacing bad bytes (with U+FFFD) is a guard against an exception here.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json usage_of(const Usage& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json head_of(const CompletionHead& h) {
    return {{"id", h.id}, {"object", "text_completion"}, {"created", h.created}, {"model", h.model}};
}

json choice(const std::string& text, const std::string& finish_reason) {
    return {{"text", text},
            {"index", 0},
            {"logprobs", nullptr},
            {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
}

}  // namespace

std::string completion_json(const CompletionHead& head, const std::string& text, const std::string& finish_reason,
                            const Usage& usage) {
    json j = head_of(head);
    j["choices"] = json::array({choice(text, finish_reason)});
    j["usage"] = usage_of(usage);
    return dump(j);
}

std::string stream_event(const CompletionHead& head, const std::string& text, const std::string& finish_reason) {
    json j = head_of(head);
    j["choices"] = json::array({choice(text, finish_reason)});
    return sse_event(dump(j));
}

std::string usage_event(const CompletionHead& head, const Usage& usage) {
    json j = head_of(head);
    j["choices"] = json::array();
    j["usage"] = usage_of(usage);
    return sse_event(dump(j));
}

std::string sse_event(const std::string& data) { return "data: " + data + "\n\n"; }

std::string models_json(const std::string& model, int64_t created) {
    return dump(
        {{"object", "list"},
         {"data", json::array({{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "itera"}}})}});
}

}  // namespace itera::server
