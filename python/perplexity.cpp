// Model.perplexity: itera_perplexity (the numbers of `itera-run ppl`), the result as an
// itera.Perplexity named tuple (python/itera/_perplexity.py).
#include <nanobind/stl/string.h>

#include <cmath>
#include <limits>

#include "python/binding.h"

namespace itera_py {

using namespace nb::literals;

namespace {

// kld_ref as a Model: a Model as it is, anything else through Model(...) (a path or .itl bytes).
nb::object reference_model(nb::handle kld_ref) {
    nb::handle model_type = nb::type<Model>();
    if (nb::isinstance<Model>(kld_ref)) return nb::borrow(kld_ref);
    return model_type(kld_ref);
}

nb::object perplexity(const Model& self, const std::string& text, nb::handle ctx, nb::handle kld_ref,
                      const std::string& device) {
    const auto core = self.open();
    if (text.find('\0') != std::string::npos) throw nb::value_error("text contains a NUL character");
    itera_perplexity_params p = itera_perplexity_default_params();
    p.device = parse_device(device);
    if (!ctx.is_none()) {
        const int64_t window = integer(ctx, "ctx");  // 0 would mean max_seq_length to the library
        if (window < 1 || window > std::numeric_limits<int32_t>::max())
            throw nb::value_error("ctx (tokens per window) must be between 1 and max_seq_length");
        p.window = static_cast<int32_t>(window);
    }
    std::shared_ptr<ModelCore> ref;
    if (!kld_ref.is_none()) {
        ref = nb::cast<const Model&>(reference_model(kld_ref)).open();
        p.reference = ref->model;
    }
    itera_perplexity_result r{};
    {
        nb::gil_scoped_release released;
        check(itera_perplexity(core->model, text.c_str(), &p, &r));
    }
    nb::object kld = ref ? nb::object(nb::float_(r.kld)) : nb::object(nb::none());
    nb::object top1 = ref ? nb::object(nb::float_(r.top1)) : nb::object(nb::none());
    return nb::module_::import_("itera._perplexity")
        .attr("Perplexity")(r.perplexity, r.tokens, r.scored, r.unk_fraction, kld, top1);
}

}  // namespace

void bind_perplexity(nb::class_<Model>& cls) {
    cls.def("perplexity", &perplexity, "text"_a, "ctx"_a = nb::none(), "kld_ref"_a = nb::none(), nb::kw_only(),
            "device"_a = "cpu",
            nb::sig("def perplexity(self, text: str, ctx: int | None = None, kld_ref: Model | str | os.PathLike[str] | "
                    "bytes | None = None, *, device: str = 'cpu') -> itera._perplexity.Perplexity"),
            R"(Scores `text` as `itera-run ppl` does, with the same numbers (itera_perplexity): the text is
tokenized whole (words the vocabulary lacks become <UNK> and count in unk_fraction), cut into
non-overlapping windows of `ctx` tokens (default max_seq_length) that each start from zero state,
and every position is scored against the token after it. Returns an itera.Perplexity: ppl
(exp of the mean negative log-likelihood, nats), tokens, scored (tokens - 1), unk_fraction, and
with `kld_ref` (a Model, or a path or bytes to load one from: typically the FP32 file a quantized
model came from, `ppl --kld-ref`) kld, the mean KL(reference || model) in nats, and top1, the
share of positions whose argmaxes agree (both None without a reference). device: "cpu", "cuda"
or "auto", for both models.

Errors: ValueError for ctx < 1 or a NUL in the text; itera.InvalidArgumentError for ctx above
max_seq_length (of either model), a text of fewer than 2 tokens, a reference that lacks one of
this model's ids; itera.NoTokenizerError; the device errors of context().)");
}

}  // namespace itera_py
