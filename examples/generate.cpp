// Generates text with the C++ wrapper (itera.hpp), streaming each piece as it is sampled.
//
//   c++ -std=c++17 generate.cpp $(pkg-config --cflags --libs itera) -o generate-cpp
//   ./generate-cpp MODEL.itl [PROMPT] [N_PREDICT] [SEED]
#include <cstdio>
#include <cstdlib>
#include <itera.hpp>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.itl [PROMPT] [N_PREDICT] [SEED]\n", argv[0]);
        return 2;
    }
    const std::string prompt = argc > 2 ? argv[2] : "and god said";
    const int32_t n_predict = argc > 3 ? static_cast<int32_t>(std::atoi(argv[3])) : 32;
    itera_sampler_params sampling = itera_sampler_default_params();
    if (argc > 4) sampling.seed = std::strtoull(argv[4], nullptr, 10);
    try {
        const itera::api::Model model = itera::api::Model::load_file(argv[1]);
        const std::vector<int32_t> ids = model.tokenize(prompt);
        if (ids.empty()) {
            std::fprintf(stderr, "error: empty prompt\n");
            return 1;
        }
        std::fputs(model.detokenize(ids).c_str(), stdout);
        itera::api::Context ctx(model);
        ctx.generate(ids, n_predict, sampling, [](int32_t, std::string_view piece) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        });
        std::putchar('\n');
    } catch (const itera::api::Exception& e) {
        std::fprintf(stderr, "error: %s (%s)\n", e.what(), itera_error_name(e.code()));
        return 1;
    }
    return 0;
}
