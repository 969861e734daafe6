// The vocabulary rows a converted model keeps, decided in one place. Token ids stay the
// checkpoint's: a file that drops embedding / LM-head rows lists the id of every row it keeps
// (config.vocab_ids), and the runtime maps ids to rows through it.
#pragma once

#include <cstdint>
#include <vector>

#include "format/model_spec.h"

namespace itera {

// Rows whose ids the tokenizer lacks (ids past its last token) are dropped: the default with a
// tokenizer smaller than the model's vocabulary (--no-trim-vocab keeps them). Does nothing
// without a tokenizer or when the rows were already chosen.
void trim_vocabulary(ModelSpec& spec);

// Embedding / head rows whose token some text can produce with the stored tokenizer, ascending
// (all of them without a tokenizer). Not producible: word level, pieces with upper-case ASCII or
// whitespace; chars, pieces longer than their lead byte announces; both, empty pieces and repeats
// of an earlier piece. <UNK> and <EOS> are always kept. (--prune-scope vocab)
std::vector<int32_t> reachable_vocab_rows(const ModelSpec& spec);

// Keeps embedding / head rows `rows` (ascending, in range, else itera::Error) and records their ids.
void keep_vocab_rows(ModelSpec& spec, const std::vector<int32_t>& rows);

}  // namespace itera
