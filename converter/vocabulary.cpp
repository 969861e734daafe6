#include "converter/vocabulary.h"

#include <set>
#include <string>

#include "common/error.h"
#include "format/tensor_names.h"

namespace itera {

void trim_vocabulary(ModelSpec& spec) {
    if (!spec.has_tokenizer || !spec.config.vocab_ids.empty()) return;
    const int32_t kept = static_cast<int32_t>(spec.tokenizer.tokens.size());  // ids 0..kept-1 are producible
    if (kept >= spec.config.vocab_size) return;
    std::vector<int32_t> rows(static_cast<size_t>(kept));
    for (int32_t r = 0; r < kept; r++) rows[static_cast<size_t>(r)] = r;
    keep_vocab_rows(spec, rows);
}

std::vector<int32_t> reachable_vocab_rows(const ModelSpec& spec) {
    std::vector<int32_t> rows;
    const std::vector<std::string>& tokens = spec.tokenizer.tokens;
    std::set<std::string> seen;
    for (int32_t r = 0; r < spec.config.vocab_size; r++) {
        const int32_t id = spec.config.vocab_ids.empty() ? r : spec.config.vocab_ids[static_cast<size_t>(r)];
        bool ok = !spec.has_tokenizer;
        if (spec.has_tokenizer && id < static_cast<int32_t>(tokens.size())) {
            const std::string& s = tokens[static_cast<size_t>(id)];
            ok = !s.empty() && seen.insert(s).second;                // encode finds the first of equal pieces
            if (ok && spec.tokenizer.kind == TokenizerKind::word) {  // lower-cased, split on whitespace
                for (unsigned char c : s)
                    if ((c >= 'A' && c <= 'Z') || c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f))
                        ok = false;
            } else if (ok) {  // the tokenizer cuts the length its lead byte announces, less at the text's end
                const auto lead = static_cast<unsigned char>(s[0]);
                const size_t n = lead >= 0xf0 && lead < 0xf8 ? 4
                                 : lead >= 0xe0              ? (lead < 0xf0 ? 3 : 1)
                                 : lead >= 0xc0              ? 2
                                                             : 1;
                ok = s.size() <= n;
            }
            ok = ok || s == "<UNK>" || s == "<EOS>";  // <UNK>: unknown pieces; <EOS>: ends generation
        }
        if (ok) rows.push_back(r);
    }
    return rows;
}

void keep_vocab_rows(ModelSpec& spec, const std::vector<int32_t>& rows) {
    for (size_t i = 0; i < rows.size(); i++)
        if (rows[i] < (i ? rows[i - 1] + 1 : 0) || rows[i] >= spec.config.vocab_size)
            throw Error("pruning plan: vocabulary rows must be ascending and in range");
    const size_t H = static_cast<size_t>(spec.config.hidden);
    for (SpecTensor& t : spec.tensors) {
        if (t.name != kEmbeddingName && t.name != kLmHeadName) continue;
        std::vector<float> kept;
        kept.reserve(rows.size() * H);
        for (int32_t r : rows) {
            const auto first = t.values.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(r) * H);
            kept.insert(kept.end(), first, first + static_cast<std::ptrdiff_t>(H));
        }
        t.values = std::move(kept);
        t.shape[0] = static_cast<int64_t>(rows.size());
    }
    std::vector<int32_t> ids;
    for (int32_t r : rows)
        ids.push_back(spec.config.vocab_ids.empty() ? r : spec.config.vocab_ids[static_cast<size_t>(r)]);
    spec.config.vocab_ids = std::move(ids);
    spec.config.vocab_size = static_cast<int32_t>(rows.size());
}

}  // namespace itera
