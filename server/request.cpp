#include "server/request.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "server/api_error.h"

namespace itera::server {

namespace {

using nlohmann::json;

constexpr int kMaxJsonDepth = 16;  // a completion request nests 3 deep; 1 MB of '[' would recurse
constexpr size_t kMaxStops = 4;    // as OpenAI
constexpr size_t kMaxStopBytes = 64;

ApiError bad(std::string code, const std::string& message) { return ApiError(400, std::move(code), message); }

// A value as it appeared, shortened for a message.
std::string shown(const json& v) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
    return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// The field, or nullptr when it is absent or null (OpenAI clients send null for "not given").
const json* field(const json& body, const char* name) {
    const auto it = body.find(name);
    return it == body.end() || it->is_null() ? nullptr : &*it;
}

int64_t integer_in(const json& v, const char* name, int64_t min, int64_t max) {
    const bool ok =
        v.is_number_integer() && (v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(max)
                                                         : v.get<int64_t>() >= min && v.get<int64_t>() <= max);
    if (!ok)
        throw bad(v.is_number_integer() ? "invalid_value" : "invalid_type",
                  "'" + std::string(name) + "' must be an integer in [" + std::to_string(min) + ", " +
                      std::to_string(max) + "], got " + shown(v));
    return v.get<int64_t>();
}

double number_in(const json& v, const char* name, double min, double max) {
    if (!v.is_number()) throw bad("invalid_type", "'" + std::string(name) + "' must be a number, got " + shown(v));
    const double x = v.get<double>();
    if (!(x >= min && x <= max))  // NaN cannot come from JSON, but is refused all the same
        throw bad("invalid_value", "'" + std::string(name) + "' must be in [" + shown(json(min)) + ", " +
                                       shown(json(max)) + "], got " + shown(v));
    return x;
}

bool boolean(const json& v, const char* name) {
    if (!v.is_boolean())
        throw bad("invalid_type", "'" + std::string(name) + "' must be true or false, got " + shown(v));
    return v.get<bool>();
}

const std::string& string_of(const json& v, const char* name) {
    if (!v.is_string()) throw bad("invalid_type", "'" + std::string(name) + "' must be a string, got " + shown(v));
    return v.get_ref<const std::string&>();
}

json parse_json(std::string_view body) {
    try {
        // The callback sees every value as it starts: a nesting limit before the parser recurses.
        return json::parse(body, [](int depth, json::parse_event_t event, json&) {
            if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
                depth >= kMaxJsonDepth)
                throw bad("invalid_json", "the body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
            return true;
        });
    } catch (const json::exception& e) {
        throw bad("invalid_json", std::string("the body is not valid JSON: ") + e.what());
    }
}

std::vector<int32_t> ids_of(const json& array, const ServedModel& model) {
    std::vector<int32_t> ids;
    ids.reserve(array.size());
    for (const json& v : array) {
        if (!v.is_number_unsigned() || v.get<uint64_t>() >= static_cast<uint64_t>(model.vocab_size))
            throw bad(v.is_number_integer() ? "invalid_value" : "invalid_type",
                      "token ids in 'prompt' must be integers in [0, " + std::to_string(model.vocab_size - 1) +
                          "], got " + shown(v));
        if (!model.readable[v.get<size_t>()])
            throw bad("invalid_value", "token id " + shown(v) + " is not in the model's (trimmed) vocabulary");
        ids.push_back(v.get<int32_t>());
    }
    return ids;
}

std::vector<int32_t> tokenize(const std::string& text, const ServedModel& model, bool allow_unk) {
    if (text.find('\0') != std::string::npos) throw bad("invalid_value", "'prompt' holds a NUL character");
    try {
        return model.model.tokenize(text, allow_unk ? ITERA_TOKENIZE_ALLOW_UNKNOWN : 0);
    } catch (const itera::api::Exception& e) {
        if (e.code() == ITERA_ERR_UNKNOWN_TOKEN)
            throw bad("unknown_word",
                      std::string(e.what()) + " (\"allow_unk\": true maps words the vocabulary lacks to <UNK>)");
        throw;
    }
}

// "prompt": a string, token ids, or a list holding one of those (OpenAI's batch form, one prompt).
std::vector<int32_t> prompt_of(const json& body, const ServedModel& model, bool allow_unk) {
    const json* p = field(body, "prompt");
    if (!p) throw bad("missing_field", "'prompt' is required");
    if (p->is_array() && p->size() == 1 && (p->front().is_string() || p->front().is_array())) p = &p->front();
    if (p->is_string()) return tokenize(p->get_ref<const std::string&>(), model, allow_unk);
    if (!p->is_array())
        throw bad("invalid_type", "'prompt' must be a string or an array of token ids, got " + shown(*p));
    if (!p->empty() && !p->front().is_number())
        throw bad("unsupported", "'prompt' holds several prompts: send one prompt per request");
    return ids_of(*p, model);
}

std::vector<std::string> stops_of(const json& v) {
    std::vector<std::string> stops;
    if (v.is_string()) {
        stops.push_back(v.get<std::string>());
    } else if (v.is_array() && v.size() <= kMaxStops) {
        for (const json& s : v) stops.push_back(string_of(s, "stop"));
    } else {
        throw bad("invalid_type", "'stop' must be a string or an array of at most 4 strings, got " + shown(v));
    }
    for (const std::string& s : stops)
        if (s.empty() || s.size() > kMaxStopBytes)
            throw bad("invalid_value", "each 'stop' string must have 1 to " + std::to_string(kMaxStopBytes) + " bytes");
    return stops;
}

// OpenAI parameters this server does not implement: refused unless they ask for the default.
void refuse_unsupported(const json& body) {
    auto refuse = [](const char* name) {
        throw bad("unsupported", "'" + std::string(name) + "' is not supported by itera-server");
    };
    for (const char* name : {"n", "best_of"})
        if (const json* v = field(body, name); v && !(v->is_number_integer() && v->get<int64_t>() == 1)) refuse(name);
    for (const char* name : {"presence_penalty", "frequency_penalty"})
        if (const json* v = field(body, name); v && !(v->is_number() && v->get<double>() == 0.0)) refuse(name);
    if (const json* v = field(body, "logit_bias"); v && !(v->is_object() && v->empty())) refuse("logit_bias");
    for (const char* name : {"logprobs", "suffix"})
        if (field(body, name)) refuse(name);
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body, const ServedModel& model, const RequestLimits& limits,
                                           uint64_t seed) {
    const json j = parse_json(body);
    if (!j.is_object()) throw bad("invalid_type", "the body must be a JSON object, got " + shown(j));
    refuse_unsupported(j);
    if (const json* v = field(j, "model")) string_of(*v, "model");  // any name: one model is served
    if (const json* v = field(j, "user")) string_of(*v, "user");

    CompletionRequest r;
    const json* allow_unk = field(j, "allow_unk");
    r.prompt = prompt_of(j, model, allow_unk && boolean(*allow_unk, "allow_unk"));
    if (r.prompt.empty()) throw bad("empty_prompt", "the prompt has no tokens");
    if (r.prompt.size() > static_cast<size_t>(limits.max_prompt_tokens))
        throw bad("prompt_too_long", "the prompt has " + std::to_string(r.prompt.size()) + " tokens, more than " +
                                         std::to_string(limits.max_prompt_tokens) + " (--max-prompt-tokens)");

    const json* max_tokens = field(j, "max_tokens");
    r.max_tokens = max_tokens ? static_cast<int32_t>(integer_in(*max_tokens, "max_tokens", 0, limits.max_tokens))
                              : std::min(limits.default_max_tokens, limits.max_tokens);
    if (const json* v = field(j, "temperature"))
        r.sampling.temperature = static_cast<float>(number_in(*v, "temperature", 0, 2));
    if (const json* v = field(j, "top_p")) r.sampling.top_p = static_cast<float>(number_in(*v, "top_p", 0, 1));
    if (const json* v = field(j, "top_k"))
        r.sampling.top_k = static_cast<int32_t>(integer_in(*v, "top_k", 0, model.vocab_size));
    r.sampling.greedy = r.sampling.temperature == 0.0f;
    r.sampling.seed = seed;
    if (const json* v = field(j, "seed")) {
        if (!v->is_number_unsigned())  // nlohmann reads every non-negative JSON integer as unsigned
            throw bad(v->is_number_integer() ? "invalid_value" : "invalid_type",
                      "'seed' must be an integer in [0, 2^64 - 1], got " + shown(*v));
        r.sampling.seed = v->get<uint64_t>();
    }
    if (const json* v = field(j, "stop")) r.stop = stops_of(*v);
    if (const json* v = field(j, "stream")) r.stream = boolean(*v, "stream");
    if (const json* v = field(j, "echo")) r.echo = boolean(*v, "echo");
    if (const json* v = field(j, "stream_options")) {
        if (!r.stream) throw bad("invalid_value", "'stream_options' needs \"stream\": true");
        if (!v->is_object()) throw bad("invalid_type", "'stream_options' must be an object, got " + shown(*v));
        if (const json* u = field(*v, "include_usage")) r.include_usage = boolean(*u, "stream_options.include_usage");
    }
    return r;
}

}  // namespace itera::server
