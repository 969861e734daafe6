// Reads the two upstream tokenizer JSON layouts into a TokenizerSpec:
//   FrequencyTokenizer: {"vocab_size", "token_to_id": {piece: id}, "id_to_token": {"id": piece}}  (word)
//   SimpleTokenizer:    {"token2id", "id2token", "vocab_size", "level": "char" | "word"}
#pragma once

#include <string>

#include "format/model_spec.h"

namespace itera {

TokenizerSpec parse_tokenizer_json(const std::string& json_text);

}  // namespace itera
