// Word- or character-level tokenizer of the upstream Itera-Lite JSON layouts, as stored in a .itl.
//   word:  lower-case (ASCII), split on whitespace, punctuation stays attached; decode joins with ' '
//   chars: every UTF-8 code point is a piece, case-sensitive; decode concatenates
// Unknown pieces map to <UNK>. Specials are found by name: <PAD> <UNK> <BOS> <EOS>.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "format/model_spec.h"

namespace itera {

class Tokenizer {
public:
    Tokenizer() = default;
    explicit Tokenizer(const TokenizerSpec& spec);

    // Pieces not in the vocabulary become <UNK> (or throw when the tokenizer has none); when
    // `unknown` is given, the unknown pieces are appended to it.
    std::vector<int32_t> encode(std::string_view text, std::vector<std::string>* unknown = nullptr) const;
    std::string decode(const std::vector<int32_t>& ids) const;
    // The text a token adds when streamed after `previous` tokens (word level puts a space between).
    std::string piece(int32_t id, bool first) const;

    TokenizerKind kind() const { return kind_; }
    int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
    int32_t unk() const { return unk_; }
    int32_t eos() const { return eos_; }

private:
    TokenizerKind kind_ = TokenizerKind::word;
    std::vector<std::string> tokens_;
    std::unordered_map<std::string, int32_t> ids_;
    int32_t unk_ = -1, eos_ = -1;
};

}  // namespace itera
