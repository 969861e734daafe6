#include "server/served_model.h"

#include <cmath>

#include "common/error.h"

namespace itera::server {

ServedModel serve_model(itera::api::Model model, std::string name) {
    if (!model.has_tokenizer()) throw Error("the model has no tokenizer: itera-server serves text");
    ServedModel s{std::move(model), std::move(name), 0, -1, 0, {}, {}};
    s.vocab_size = s.model.vocab_size();
    s.eos = s.model.eos();
    s.max_seq_length = s.model.max_seq_length();
    s.pieces.reserve(static_cast<size_t>(s.vocab_size));
    for (int32_t id = 0; id < s.vocab_size; id++) s.pieces.push_back(s.model.piece(id, false));
    // The C API refuses an id a trimmed vocabulary dropped and gives it a -INFINITY logit: feed the
    // first id it accepts and read the others from its logits, so a prompt of ids is checked
    // before it reaches the batch (where one bad id would fail every sequence's step).
    s.readable.assign(static_cast<size_t>(s.vocab_size), false);
    itera::api::Context probe(s.model);
    for (int32_t id = 0; id < s.vocab_size; id++) {
        const float* logits = nullptr;
        if (itera_eval(probe.get(), id, &logits) != ITERA_OK) continue;
        for (int32_t other = id; other < s.vocab_size; other++)
            s.readable[static_cast<size_t>(other)] = logits[other] != -INFINITY;
        s.readable[static_cast<size_t>(id)] = true;
        break;
    }
    return s;
}

}  // namespace itera::server
