// The model as the server uses it: the C API handle, the name clients see, and what every request
// looks up, computed once: the text each token adds when streamed, and which ids the model reads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "itera.hpp"

namespace itera::server {

struct ServedModel {
    itera::api::Model model;
    std::string name;                 // "model" in responses and /v1/models
    int32_t vocab_size = 0;           // token ids are in [0, vocab_size)
    int32_t eos = -1;                 // <EOS>, -1 when none
    int32_t max_seq_length = 0;       // the window (longer sequences slide: docs/server.md)
    std::vector<std::string> pieces;  // itera_token_piece(id, first = 0): the text a generated id adds
    std::vector<bool> readable;       // ids the model can read (a trimmed vocabulary drops some)
};

// Describes `model` for serving under `name`. Throws itera::Error when it has no tokenizer (the
// server speaks text).
ServedModel serve_model(itera::api::Model model, std::string name);

}  // namespace itera::server
