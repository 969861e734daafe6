#include "runtime/tokenizer.h"

#include "common/error.h"

namespace itera {

namespace {

bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

// Length of the UTF-8 sequence starting with `lead`; invalid bytes count as one piece each.
size_t utf8_length(unsigned char lead) {
    if (lead >= 0xf0 && lead < 0xf8) return 4;
    if (lead >= 0xe0) return lead < 0xf0 ? 3 : 1;
    if (lead >= 0xc0) return 2;
    return 1;
}

}  // namespace

Tokenizer::Tokenizer(const TokenizerSpec& spec) : kind_(spec.kind), tokens_(spec.tokens) {
    for (size_t i = 0; i < tokens_.size(); i++) ids_.emplace(tokens_[i], static_cast<int32_t>(i));
    auto special = [&](const char* name) {
        auto it = ids_.find(name);
        return it == ids_.end() ? -1 : it->second;
    };
    unk_ = special("<UNK>");
    eos_ = special("<EOS>");
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, std::vector<std::string>* unknown) const {
    std::vector<int32_t> ids;
    auto add = [&](const std::string& piece) {
        auto it = ids_.find(piece);
        if (it != ids_.end()) {
            ids.push_back(it->second);
            return;
        }
        if (unknown) unknown->push_back(piece);
        if (unk_ < 0) throw Error("'" + piece + "' is not in the vocabulary and the tokenizer has no <UNK>");
        ids.push_back(unk_);
    };
    size_t i = 0;
    if (kind_ == TokenizerKind::chars) {
        while (i < text.size()) {
            const size_t n = std::min(utf8_length(static_cast<unsigned char>(text[i])), text.size() - i);
            add(std::string(text.substr(i, n)));
            i += n;
        }
        return ids;
    }
    while (i < text.size()) {
        while (i < text.size() && is_space(static_cast<unsigned char>(text[i]))) i++;
        std::string word;
        while (i < text.size() && !is_space(static_cast<unsigned char>(text[i]))) {
            const char c = text[i++];
            word += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
        }
        if (!word.empty()) add(word);
    }
    return ids;
}

std::string Tokenizer::piece(int32_t id, bool first) const {
    const std::string& token = (id >= 0 && id < size()) ? tokens_[static_cast<size_t>(id)]
                               : unk_ >= 0              ? tokens_[static_cast<size_t>(unk_)]
                                                        : std::string("<UNK>");
    if (kind_ == TokenizerKind::word && !first) return " " + token;
    return token;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string out;
    for (size_t i = 0; i < ids.size(); i++) out += piece(ids[i], i == 0);
    return out;
}

}  // namespace itera
