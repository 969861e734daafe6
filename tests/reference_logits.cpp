// reference_logits MODEL.itl ID,ID,...: the reference forward's logits (runtime/reference_forward.h)
// for every position of the ids, from zero state, in the JSON `itera-run logits` prints, so that
// tests/golden/test_golden.py holds the reference to PyTorch beside itera-run. Test-only.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common/error.h"
#include "runtime/model.h"
#include "runtime/reference_forward.h"

namespace {

std::vector<int32_t> parse_ids(const std::string& list) {
    std::vector<int32_t> ids;
    size_t at = 0;
    while (at <= list.size()) {
        const size_t comma = std::min(list.find(',', at), list.size());
        const std::string item = list.substr(at, comma - at);
        size_t used = 0;
        long long id = -1;
        try {
            id = std::stoll(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (item.empty() || used != item.size() || id < 0 || id > INT32_MAX)
            throw itera::Error("bad id '" + item + "' (expected comma-separated ids)");
        ids.push_back(static_cast<int32_t>(id));
        at = comma + 1;
    }
    return ids;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fputs("usage: reference_logits MODEL.itl ID,ID,...\n", stderr);
        return 2;
    }
    try {
        const auto model = itera::load_model_file(argv[1]);
        const std::vector<int32_t> ids = parse_ids(argv[2]);
        const int32_t n = static_cast<int32_t>(ids.size()), V = model->vocab_rows();
        const std::vector<float> logits = itera::reference_logits(*model, ids.data(), n);
        std::string out = "{\"logits\": [";
        char buf[32];
        for (int32_t i = 0; i < n; i++) {
            out += i ? ", [" : "[";
            for (int32_t v = 0; v < V; v++) {
                std::snprintf(buf, sizeof buf, v ? ", %.9g" : "%.9g",
                              static_cast<double>(logits[static_cast<size_t>(i) * V + v]));
                out += buf;
            }
            out += "]";
        }
        out += "]";
        if (!model->config.vocab_ids.empty()) {
            out += ", \"vocab_ids\": [";
            for (int32_t v = 0; v < V; v++) out += (v ? ", " : "") + std::to_string(model->id_of(v));
            out += "]";
        }
        out += "}\n";
        std::fputs(out.c_str(), stdout);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
