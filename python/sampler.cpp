// itera.Sampler: the C API's sampler (itera_sampler_*) over one logits row, for code that steps a
// Batch itself and samples each sequence with that sequence's own settings and seeded stream (the
// Ray Serve replica, serve/). generate() and complete() sample inside the library instead.
#include <nanobind/stl/string.h>

#include "python/binding.h"

namespace itera_py {

using namespace nb::literals;

namespace {

struct Sampler {
    itera_sampler* sampler = nullptr;
    itera_sampler_params params{};

    Sampler() = default;
    Sampler(const Sampler&) = delete;
    Sampler& operator=(const Sampler&) = delete;
    ~Sampler() { itera_sampler_free(sampler); }
};

constexpr const char* kSamplerDoc = R"(Draws token ids from logits as itera-run and itera-server do.

Sampler(*, temperature=0.8, top_k=40, top_p=0.95, seed=None, greedy=False): greedy (or
temperature <= 0) takes the most likely id; otherwise softmax at the temperature over the top_k
largest logits (0: all), cut to the smallest set whose probability reaches top_p, one draw from a
stream seeded by seed (None: a random seed). The same settings and seed give the same ids as
`itera-run --seed` and itera-server on the same logits.)";

}  // namespace

void bind_sampler(nb::module_& m) {
    nb::class_<Sampler>(m, "Sampler", kSamplerDoc)
        .def(
            "__init__",
            [](Sampler* self, double temperature, nb::handle top_k, double top_p, nb::handle seed, bool greedy) {
                const GenerateOptions o =
                    generate_options(nb::int_(0), temperature, top_k, top_p, seed, greedy, nb::none());
                new (self) Sampler();
                self->params = o.sampling;
                check(itera_sampler_new(&self->params, &self->sampler));
            },
            nb::kw_only(), "temperature"_a = 0.8, "top_k"_a = 40, "top_p"_a = 0.95, "seed"_a = nb::none(),
            "greedy"_a = false,
            nb::sig("def __init__(self, *, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, "
                    "seed: int | None = None, greedy: bool = False) -> None"))
        .def_prop_ro(
            "greedy", [](const Sampler& s) { return s.params.greedy != 0 || s.params.temperature <= 0.0f; },
            "Whether sample() is the argmax (greedy=True or temperature <= 0).")
        .def(
            "sample",
            [](Sampler& s, nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu> logits) {
                if (logits.shape(0) == 0 || logits.shape(0) > static_cast<size_t>(INT32_MAX))
                    throw nb::value_error("logits must hold between 1 and 2^31 - 1 values");
                int32_t token = -1;
                {
                    nb::gil_scoped_release released;
                    check(
                        itera_sampler_sample(s.sampler, logits.data(), static_cast<int32_t>(logits.shape(0)), &token));
                }
                return token;
            },
            "logits"_a, nb::sig("def sample(self, logits: numpy.typing.NDArray[numpy.float32]) -> int"),
            R"(The next token id from one row of float32 logits (a 1-D C-contiguous array, e.g. a row of
Batch.run's result). Advances the seeded stream. NaN logits raise itera.InvalidArgumentError.)");
}

}  // namespace itera_py
