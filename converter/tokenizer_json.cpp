#include "converter/tokenizer_json.h"

#include <charconv>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>

#include "common/error.h"

namespace itera {

namespace {

constexpr size_t kMaxTokens = size_t{1} << 24;

int64_t parse_id(const std::string& key) {
    int64_t id = -1;
    auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
    if (ec != std::errc() || end != key.data() + key.size() || id < 0)
        throw Error("tokenizer JSON: id '" + key + "' is not a non-negative integer");
    return id;
}

}  // namespace

TokenizerSpec parse_tokenizer_json(const std::string& json_text) {
    const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
    if (j.is_discarded()) throw Error("tokenizer JSON is not valid JSON");
    if (!j.is_object()) throw Error("tokenizer JSON must be an object");
    TokenizerSpec spec;
    const char* forward_key = nullptr;
    const char* backward_key = nullptr;
    if (j.contains("id_to_token")) {
        forward_key = "token_to_id";
        backward_key = "id_to_token";
        spec.kind = TokenizerKind::word;
    } else if (j.contains("id2token")) {
        forward_key = "token2id";
        backward_key = "id2token";
        const auto level = j.find("level");
        if (level == j.end() || !level->is_string() || (*level != "char" && *level != "word"))
            throw Error("tokenizer JSON: 'level' must be \"char\" or \"word\"");
        spec.kind = *level == "char" ? TokenizerKind::chars : TokenizerKind::word;
    } else {
        throw Error("tokenizer JSON has neither 'id_to_token' nor 'id2token': unknown tokenizer layout");
    }
    const nlohmann::json& backward = j[backward_key];
    if (!backward.is_object() || backward.empty() || backward.size() > kMaxTokens)
        throw Error(std::string("tokenizer JSON: '") + backward_key + "' must be a non-empty object of id -> token");
    spec.tokens.assign(backward.size(), std::string());
    std::vector<bool> seen(backward.size(), false);
    for (auto it = backward.begin(); it != backward.end(); ++it) {
        const int64_t id = parse_id(it.key());
        if (id >= static_cast<int64_t>(backward.size()))
            throw Error("tokenizer JSON: ids must be contiguous from 0 (found " + it.key() + " among " +
                        std::to_string(backward.size()) + " tokens)");
        if (!it.value().is_string()) throw Error("tokenizer JSON: token " + it.key() + " is not a string");
        if (seen[static_cast<size_t>(id)]) throw Error("tokenizer JSON: id " + it.key() + " appears twice");
        seen[static_cast<size_t>(id)] = true;
        std::string token = it.value().get<std::string>();
        if (token.empty() || token.find('\0') != std::string::npos)
            throw Error("tokenizer JSON: token " + it.key() + " is empty or holds a NUL byte");
        spec.tokens[static_cast<size_t>(id)] = std::move(token);
    }
    // One id per token: text encodes one way, and the forward map below can agree.
    std::unordered_map<std::string_view, size_t> id_of;
    for (size_t id = 0; id < spec.tokens.size(); id++)
        if (const auto [at, fresh] = id_of.emplace(spec.tokens[id], id); !fresh)
            throw Error("tokenizer JSON: token '" + spec.tokens[id] + "' has two ids, " + std::to_string(at->second) +
                        " and " + std::to_string(id));
    // The forward map, when present, must agree: a mismatch means the file is not what it claims.
    if (j.contains(forward_key)) {
        const nlohmann::json& forward = j[forward_key];
        if (!forward.is_object()) throw Error(std::string("tokenizer JSON: '") + forward_key + "' must be an object");
        for (auto it = forward.begin(); it != forward.end(); ++it) {
            if (!it.value().is_number_integer())
                throw Error("tokenizer JSON: id of '" + it.key() + "' is not an integer");
            const int64_t id = it.value().get<int64_t>();
            if (id < 0 || id >= static_cast<int64_t>(spec.tokens.size()) ||
                spec.tokens[static_cast<size_t>(id)] != it.key())
                throw Error("tokenizer JSON: '" + std::string(forward_key) + "' and '" + backward_key +
                            "' disagree about '" + it.key() + "'");
        }
        if (forward.size() != spec.tokens.size())
            throw Error("tokenizer JSON: '" + std::string(forward_key) + "' has " + std::to_string(forward.size()) +
                        " tokens, '" + backward_key + "' " + std::to_string(spec.tokens.size()));
    }
    return spec;
}

}  // namespace itera
