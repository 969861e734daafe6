// itera-run: generate text, print logits, score perplexity and describe a .itl model.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>

#include "common/cli_parse.h"
#include "common/error.h"
#include "common/file_io.h"
#include "format/tensor_names.h"
#include "runtime/builtin_model.h"
#include "runtime/context.h"
#include "runtime/devices.h"
#include "runtime/evaluate.h"
#include "runtime/model.h"
#include "runtime/model_info.h"
#include "runtime/sampler.h"
#include "version.h"

namespace {

using itera::Error;

constexpr const char* kBuiltinPrompt = "and god said";
constexpr uint64_t kMaxTextBytes = uint64_t{1} << 30;

struct Args {
    std::string model_path, prompt, ids_text, file, kld_ref, device = "cpu", kernels = "native";
    bool has_prompt = false, print_ids = false, json = false, allow_unk = false;
    int32_t n_predict = 64, ctx = 0;
    itera::SamplerParams sampling;
    bool has_seed = false, has_ctx = false;
};

std::unique_ptr<itera::Model> load(const Args& args) {
    itera::kernel_path();  // a bad ITERA_KERNELS fails here, before any output
    auto model = args.model_path.empty()
                     ? itera::load_model(itera::ItlFile::from_memory(itera_builtin_model, itera_builtin_model_size))
                     : itera::load_model_file(args.model_path);
    model->gemm = std::make_shared<itera::GemmDispatch>(itera::parse_gemm_provider(args.kernels));
    return model;
}

std::vector<int32_t> parse_ids(const std::string& text) {
    std::vector<int32_t> ids;
    const char* p = text.data();
    const char* end = p + text.size();
    while (p < end) {
        int32_t id = 0;
        auto [next, ec] = std::from_chars(p, end, id);
        if (ec != std::errc() || id < 0)
            throw Error("--ids must be a comma-separated list of token ids, got '" + text + "'");
        ids.push_back(id);
        p = next;
        if (p < end && (*p != ',' || p + 1 == end))  // a separator, and an id after it
            throw Error("--ids must be a comma-separated list of token ids, got '" + text + "'");
        if (p < end) p++;
    }
    return ids;
}

// Logits that are not all finite come from broken weights (a NaN or an overflow): an error here,
// as in sampling, rather than "nan" in the JSON or the perplexity.
void check_finite(const float* logits, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!std::isfinite(logits[i])) throw Error("the model produced non-finite logits (corrupt weights?)");
}

// A context on the device --device names (the library chooses the backend: runtime/devices.h).
std::unique_ptr<itera::Context> context_on(const itera::Model& model, const std::string& device) {
    itera::BackendOptions options;
    options.device = itera::parse_device(device);
    return std::make_unique<itera::Context>(model, itera::make_backend(model, options));
}

const itera::Tokenizer& tokenizer_of(const itera::Model& model) {
    if (!model.has_tokenizer) throw Error("the model has no tokenizer: pass token ids with --ids");
    return model.tokenizer;
}

// The prompt as ids: --ids, or -p text (unknown words are an error unless --allow-unk).
std::vector<int32_t> prompt_ids(const itera::Model& model, const Args& args, bool builtin) {
    std::vector<int32_t> ids;
    if (!args.ids_text.empty()) {
        ids = parse_ids(args.ids_text);
    } else {
        if (!args.has_prompt && !builtin) throw Error("no prompt: give -p TEXT or --ids LIST");
        const std::string text = args.has_prompt ? args.prompt : kBuiltinPrompt;
        std::vector<std::string> unknown;
        ids = tokenizer_of(model).encode(text, &unknown);
        if (!unknown.empty() && !args.allow_unk)
            throw Error("'" + unknown[0] +
                        "' is not in the model's vocabulary (use --allow-unk to map unknown words to <UNK>)");
    }
    if (ids.empty()) throw Error("empty prompt");
    for (int32_t id : ids)
        if (model.row_of(id) < 0) throw Error("token id " + std::to_string(id) + " is not in the model's vocabulary");
    return ids;
}

int generate(const Args& args) {
    const auto model = load(args);
    const std::vector<int32_t> prompt = prompt_ids(*model, args, args.model_path.empty());
    const auto ctx = context_on(*model, args.device);
    itera::SamplerParams sp = args.sampling;
    if (!args.has_seed) sp.seed = std::random_device{}();
    itera::Sampler sampler(sp);
    const bool stream_text = !args.print_ids && model->has_tokenizer;  // no tokenizer: ids
    if (stream_text) {
        std::string text = tokenizer_of(*model).decode(prompt);
        std::fputs(text.c_str(), stdout);
    }
    const float* logits = ctx->eval_tokens(prompt.data(), static_cast<int32_t>(prompt.size()));
    const int32_t eos = model->has_tokenizer ? model->tokenizer.eos() : -1;
    for (int32_t i = 0; i < args.n_predict; i++) {
        const int32_t next = model->id_of(sampler.sample(logits, model->vocab_rows()));
        if (next == eos) break;
        if (stream_text) {
            std::fputs(model->tokenizer.piece(next, false).c_str(), stdout);
        } else {
            std::printf(i ? " %d" : "%d", next);
        }
        std::fflush(stdout);
        if (i + 1 < args.n_predict) logits = ctx->eval(next);
    }
    std::putchar('\n');
    return 0;
}

int logits(const Args& args) {
    const auto model = load(args);
    const std::vector<int32_t> ids = prompt_ids(*model, args, false);
    if (static_cast<int32_t>(ids.size()) > model->config.max_seq_length)
        throw Error(std::to_string(ids.size()) + " ids exceed max_seq_length " +
                    std::to_string(model->config.max_seq_length));
    const auto ctx = context_on(*model, args.device);
    const float* rows = ctx->eval_all(ids.data(), static_cast<int32_t>(ids.size()));
    check_finite(rows, ids.size() * static_cast<size_t>(model->vocab_rows()));
    // With a trimmed vocabulary the columns are the kept ids, listed in "vocab_ids".
    std::string out = "{\"logits\": [";
    char buf[32];
    for (size_t i = 0; i < ids.size(); i++) {
        const float* row = rows + i * static_cast<size_t>(model->vocab_rows());
        out += i ? ", [" : "[";
        for (int32_t v = 0; v < model->vocab_rows(); v++) {
            std::snprintf(buf, sizeof buf, v ? ", %.9g" : "%.9g", static_cast<double>(row[v]));
            out += buf;
        }
        out += "]";
    }
    out += "]";
    if (!model->config.vocab_ids.empty()) {
        out += ", \"vocab_ids\": [";
        for (int32_t v = 0; v < model->vocab_rows(); v++) out += (v ? ", " : "") + std::to_string(model->id_of(v));
        out += "]";
    }
    out += "}\n";
    std::fputs(out.c_str(), stdout);
    return 0;
}

int perplexity(const Args& args) {
    const auto model = load(args);
    const itera::Tokenizer& tok = tokenizer_of(*model);
    if (args.file.empty()) throw Error("ppl needs --file TEXT");
    const std::string text = itera::read_file_text(args.file, kMaxTextBytes);
    const std::vector<int32_t> ids = tok.encode(text);
    if (ids.size() < 2) throw Error("'" + args.file + "' has fewer than 2 tokens to score");
    const int32_t n = args.has_ctx ? args.ctx : model->config.max_seq_length;
    if (n < 1 || n > model->config.max_seq_length)
        throw Error("--ctx must be between 1 and max_seq_length " + std::to_string(model->config.max_seq_length));
    // --kld-ref: the reference runs the same windows; both distributions are compared over this
    // model's ids (all of the reference's when nothing was trimmed), each renormalized over them.
    std::unique_ptr<itera::Model> ref;
    if (!args.kld_ref.empty()) {
        ref = itera::load_model_file(args.kld_ref);
        if (n > ref->config.max_seq_length) throw Error("--ctx exceeds the reference's max_seq_length");
    }
    const auto ctx = context_on(*model, args.device);
    const auto ref_ctx = ref ? context_on(*ref, args.device) : nullptr;
    const itera::Perplexity p = itera::perplexity(*ctx, ids, n, ref_ctx.get());
    const double ppl = p.ppl, unk_fraction = p.unk_fraction, mean_kld = p.vs_reference.kld, top1 = p.vs_reference.top1;
    const size_t scored = p.scored;
    if (args.json) {
        std::printf("{\"ppl\": %.6f, \"tokens\": %zu, \"scored\": %zu, \"unk_fraction\": %.6f", ppl, ids.size(), scored,
                    unk_fraction);
        if (ref) std::printf(", \"kld\": %.9g, \"top1\": %.6f", mean_kld, top1);
        std::printf("}\n");
    } else {
        std::printf("perplexity %.4f over %zu scored positions (%zu tokens, %.2f%% <UNK>, windows of %d)\n", ppl,
                    scored, ids.size(), 100.0 * unk_fraction, n);
        if (ref)
            std::printf("vs %s: mean KL divergence %.6f nats, top-1 agreement %.2f%%\n", args.kld_ref.c_str(), mean_kld,
                        100.0 * top1);
    }
    return 0;
}

int info(const Args& args) {
    const auto model = load(args);
    const itera::ModelConfig& c = model->config;
    const itera::ItlFile& f = *model->file;
    const itera::TensorTotals totals = itera::tensor_totals(*model);
    const char* kinds[] = {"ffn", "moe", "none"};
    const std::string source = args.model_path.empty() ? "(built-in)" : args.model_path;
    if (args.json) {
        std::printf("%s\n", itera::model_info_json(*model, source).c_str());
        return 0;
    }
    std::printf("model       %s (%zu bytes, format v%u)\n", source.c_str(), f.file_size(), f.format_version());
    std::printf("source      %s sha256 %s (itera-convert %s)\n", f.provenance().source_name.c_str(),
                f.provenance().source_sha256.c_str(), f.provenance().converter_version.c_str());
    std::printf("converted   itera-convert %s\n", f.provenance().options.c_str());
    std::printf("config      vocab %d, hidden %d, max_seq_length %d, %zu layers, %s head\n", c.vocab_size, c.hidden,
                c.max_seq_length, c.layers.size(), c.tied_head ? "tied" : "untied");
    if (!c.vocab_ids.empty())
        std::printf("vocabulary  trimmed: %d rows kept, token ids up to %d\n", c.vocab_size, c.vocab_ids.back());
    for (size_t l = 0; l < c.layers.size(); l++) {
        const auto& lc = c.layers[l];
        std::printf("layer %-4zu  ssm inner %d state %d conv %d; %s", l, lc.inner, lc.state, lc.conv_kernel,
                    kinds[static_cast<int>(lc.kind)]);
        if (lc.kind == itera::ChannelKind::moe)
            std::printf(" %zu experts top-%d width %d", lc.ffn_widths.size(), lc.top_k, lc.ffn_widths[0]);
        if (lc.kind == itera::ChannelKind::ffn) std::printf(" width %d", lc.ffn_widths[0]);
        std::printf("\n");
    }
    std::printf("tokenizer   %s\n",
                model->has_tokenizer
                    ? (std::to_string(model->tokenizer.size()) + " tokens, " +
                       (model->tokenizer.kind() == itera::TokenizerKind::word ? "word" : "char") + " level")
                          .c_str()
                    : "none");
    for (const auto& t : f.tensors())
        std::printf(
            "  %-48s %-16s %-5s %10zu bytes%s\n", t.name.c_str(), itera::shape_text(t.shape).c_str(),
            std::string(itera::dtype_name(t.dtype)).c_str(), t.bytes,
            t.layout == itera::Layout::row_major ? "" : ("  " + std::string(itera::layout_name(t.layout))).c_str());
    std::printf("parameters  %lld, tensor bytes %ju, %.2f bits per weight\n", static_cast<long long>(totals.params),
                static_cast<uintmax_t>(totals.bytes), totals.bits_per_weight);
    std::printf("%-14s %-30s %10s %10s %6s  %s\n", "part", "shape", "params", "bytes", "share", "dtypes");
    uint64_t part_bytes = 0;
    for (const itera::Part& p : itera::file_parts(*model)) {
        std::printf("%-14s %-30s %10lld %10ju %5.1f%%  %s\n", p.name.c_str(), p.shape.c_str(),
                    static_cast<long long>(p.params), static_cast<uintmax_t>(p.bytes),
                    100.0 * static_cast<double>(p.bytes) / static_cast<double>(f.file_size()), p.dtypes.c_str());
        part_bytes += p.bytes;
    }
    const uint64_t other = f.file_size() - part_bytes;
    std::printf("%-14s %-30s %10s %10ju %5.1f%%\n", "other", "header, metadata, tokenizer, padding", "",
                static_cast<uintmax_t>(other), 100.0 * static_cast<double>(other) / static_cast<double>(f.file_size()));
    std::printf("kernels     %s (ITERA_KERNELS=scalar|avx2|avx512 to choose)\n", itera::kernel_path_name());
    return 0;
}

int run(int argc, char** argv) {
    CLI::App app{
        "itera-run: generate text with an Itera-Lite model (.itl); without -m it uses the built-in model.\n"
        "Subcommands: generate (default), logits, ppl, info."};
    Args a;
    app.add_option("-m,--model", a.model_path, "model file (.itl); default: the built-in model")
        ->check(itera::non_empty());
    app.add_option("-p,--prompt", a.prompt, "prompt text");
    app.add_option("--ids", a.ids_text, "prompt as comma-separated token ids (instead of -p)")
        ->check(itera::non_empty());
    app.add_option("-n,--n-predict", a.n_predict, "tokens to generate (default 64)")->check(CLI::Range(0, 1 << 30));
    app.add_option("--temp", a.sampling.temperature, "sampling temperature (default 0.8; 0 = greedy)")
        ->check(itera::number_in(0.0, 100.0));
    app.add_option("--top-k", a.sampling.top_k, "keep the k most likely tokens (default 40; 0 = all)")
        ->check(CLI::Range(0, 1 << 30));
    app.add_option("--top-p", a.sampling.top_p, "nucleus sampling mass (default 0.95; 1 = off)")
        ->check(itera::number_in(0.0, 1.0));
    // CLI11 2.1 reads "-1" as 2^64 - 1 and an overflow as the largest value: the digits are checked first.
    app.add_option("--seed", a.sampling.seed, "random seed (same seed, same text; default: random)")
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
                uint64_t value = 0;
                const char* end = text.data() + text.size();
                const auto [stop, error] = std::from_chars(text.data(), end, value);
                return error == std::errc() && stop == end ? ""
                                                           : "must be an integer in [0, 2^64 - 1], got '" + text + "'";
            },
            "UINT64"));
    app.add_flag("--greedy", a.sampling.greedy, "always take the most likely token");
    app.add_flag("--print-ids", a.print_ids, "print only the generated token ids, space-separated");
    app.add_flag("--allow-unk", a.allow_unk,
                 "map prompt words missing from the vocabulary to <UNK> instead of failing");
    app.add_option("--device", a.device,
                   "run the model on the cpu (default), on the GPU (cuda; docs/cuda.md), or auto (the GPU when one "
                   "can run the model, else the cpu)")
        ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
    app.add_option("--kernels", a.kernels,
                   "products over many rows (a prompt's prefill, each window of logits and ppl): native (default), "
                   "onednn, or auto (the faster per shape, timed at first use)")
        ->check(CLI::IsMember({"native", "onednn", "auto"}));
    app.set_version_flag("--version", ITERA_VERSION);
    app.add_subcommand("generate", "generate text (the default)")->fallthrough();
    auto* lg =
        app.add_subcommand("logits", "print JSON logits for every position of --ids/-p (one forward from zero state)")
            ->fallthrough();
    auto* ppl =
        app.add_subcommand("ppl", "perplexity of a text file: non-overlapping windows from zero state")->fallthrough();
    ppl->add_option("--file", a.file, "text file to score")->required()->check(itera::non_empty());
    ppl->add_option("--ctx", a.ctx, "window length in tokens (default max_seq_length)");
    ppl->add_option(
           "--kld-ref", a.kld_ref,
           "reference model (e.g. the FP32 file): also report the mean KL divergence of this model's next-token "
           "distribution from the reference's, and their top-1 agreement, on the same windows")
        ->check(itera::non_empty());
    ppl->add_flag("--json", a.json, "print {\"ppl\", \"tokens\", \"scored\", \"unk_fraction\"[, \"kld\", \"top1\"]}");
    auto* inf = app.add_subcommand("info", "describe the model: config, tensors, sizes")->fallthrough();
    inf->add_flag("--json", a.json, "print JSON");
    app.require_subcommand(0, 1);
    if (const auto status = itera::parse_command_line(app, argc, argv, "itera-run")) return *status;
    a.has_prompt = app.count("--prompt") > 0;
    a.has_seed = app.count("--seed") > 0;
    a.has_ctx = ppl->count("--ctx") > 0;
    if (*lg) return logits(a);
    if (*ppl) return perplexity(a);
    if (*inf) return info(a);
    return generate(a);
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
