// itera.Batch: many sequences decoded in lockstep (itera_batch_*). eval() feeds one token to every
// sequence and returns their logits as one [n, vocab_size] array; run() feeds some sequences any
// number of tokens (continuous batching). Arrays are copies the caller owns, as Context.eval's.
#include <nanobind/stl/string.h>

#include <climits>
#include <cstring>

#include "python/binding.h"

namespace itera_py {

using namespace nb::literals;

namespace {

struct BatchCore {
    std::shared_ptr<ModelCore> model;
    itera_batch* batch = nullptr;
    int32_t size = 0, vocab = 0, threads = 1;
    std::mutex mutex;

    BatchCore(std::shared_ptr<ModelCore> m, int32_t n, int32_t n_threads, int device)
        : model(std::move(m)), size(n), vocab(itera_model_vocab_size(model->model)), threads(n_threads) {
        itera_batch_params p = itera_batch_default_params();
        p.n_threads = n_threads;
        p.device = device;
        nb::gil_scoped_release released;
        check(itera_batch_new(model->model, n, &p, &batch));
    }
    BatchCore(const BatchCore&) = delete;
    BatchCore& operator=(const BatchCore&) = delete;
    ~BatchCore() { itera_batch_free(batch); }
};

struct Batch {
    std::shared_ptr<BatchCore> core;
    nb::object model;
};

int32_t int32_arg(int64_t v, const char* name) {
    if (v < INT32_MIN || v > INT32_MAX) throw nb::value_error((std::string(name) + " is out of range").c_str());
    return static_cast<int32_t>(v);
}

int32_t sequence_index(const BatchCore& b, nb::handle index) {
    const int64_t i = integer(index, "a sequence index");
    if (i < 0 || i >= b.size)
        throw nb::index_error(
            ("sequence " + std::to_string(i) + " is out of range [0, " + std::to_string(b.size) + ")").c_str());
    return static_cast<int32_t>(i);
}

// Copies the logits of `seqs` (each fed by the last call) into a new [seqs, vocab] array.
void rows(const BatchCore& b, const std::vector<int32_t>& seqs, float* out) {
    const size_t vocab = static_cast<size_t>(b.vocab);
    for (size_t r = 0; r < seqs.size(); r++)
        std::memcpy(out + r * vocab, itera_batch_logits(b.batch, seqs[r]), vocab * sizeof(float));
}

nb::object eval(Batch& self, nb::handle tokens) {
    const std::shared_ptr<BatchCore> core = self.core;
    const std::vector<int32_t> ids = token_ids(tokens);
    if (ids.size() != static_cast<size_t>(core->size))
        throw nb::value_error(("eval() takes one token per sequence: " + std::to_string(core->size) + ", got " +
                               std::to_string(ids.size()))
                                  .c_str());
    std::vector<int32_t> all(ids.size());
    for (size_t i = 0; i < all.size(); i++) all[i] = static_cast<int32_t>(i);
    const size_t n = all.size(), vocab = static_cast<size_t>(core->vocab);
    std::unique_ptr<float[]> out(new float[n * vocab]);
    {
        nb::gil_scoped_release released;
        std::lock_guard<std::mutex> lock(core->mutex);
        check(itera_batch_eval(core->batch, ids.data()));
        rows(*core, all, out.get());
    }
    return nb::cast(float_array(out.release(), {n, vocab}));
}

nb::object run(Batch& self, nb::handle feeds) {
    const std::shared_ptr<BatchCore> core = self.core;
    // {seq: ids} or (seq, ids) pairs, in the order given.
    nb::object items = PyDict_Check(feeds.ptr()) ? feeds.attr("items")() : nb::borrow(feeds);
    std::vector<int32_t> seqs;
    std::vector<std::vector<int32_t>> tokens;
    for (nb::handle item : nb::iter(items)) {
        nb::tuple pair;
        if (!nb::try_cast(item, pair) || pair.size() != 2)
            throw nb::type_error("run() takes {seq: ids} or (seq, ids) pairs");
        seqs.push_back(sequence_index(*core, pair[0]));
        tokens.push_back(token_ids(pair[1]));
        if (tokens.back().empty()) throw nb::value_error("a feed has no token ids");
        if (tokens.back().size() > INT32_MAX) throw nb::value_error("a feed has more than 2^31 - 1 token ids");
    }
    std::vector<itera_batch_feed> list(seqs.size());
    for (size_t f = 0; f < list.size(); f++)
        list[f] = {seqs[f], tokens[f].data(), static_cast<int32_t>(tokens[f].size())};
    const size_t vocab = static_cast<size_t>(core->vocab);
    std::unique_ptr<float[]> out(new float[std::max<size_t>(seqs.size(), 1) * vocab]);
    {
        nb::gil_scoped_release released;
        std::lock_guard<std::mutex> lock(core->mutex);
        check(itera_batch_run(core->batch, list.data(), static_cast<int32_t>(list.size())));
        rows(*core, seqs, out.get());
    }
    return nb::cast(float_array(out.release(), {seqs.size(), vocab}));
}

nb::object logits(Batch& self, nb::handle i) {
    const std::shared_ptr<BatchCore> core = self.core;
    const int32_t seq = sequence_index(*core, i);
    const size_t vocab = static_cast<size_t>(core->vocab);
    return copy_logits(core->mutex, vocab, [&] { return itera_batch_logits(core->batch, seq); });
}

int32_t position(Batch& self, nb::handle i) {
    const std::shared_ptr<BatchCore> core = self.core;
    const int32_t seq = sequence_index(*core, i);
    nb::gil_scoped_release released;
    std::lock_guard<std::mutex> lock(core->mutex);
    return itera_batch_position(core->batch, seq);
}

void reset(Batch& self, nb::handle i) {
    const std::shared_ptr<BatchCore> core = self.core;
    const int32_t seq = sequence_index(*core, i);
    nb::gil_scoped_release released;
    std::lock_guard<std::mutex> lock(core->mutex);
    check(itera_batch_reset(core->batch, seq));
}

}  // namespace

nb::object new_batch(nb::object model, nb::handle n_arg, nb::handle threads_arg, const std::string& device) {
    const int64_t n = integer(n_arg, "n"), threads = integer(threads_arg, "threads");
    if (n < 1) throw nb::value_error("a batch needs n >= 1 sequences");
    if (threads < 1) throw nb::value_error("threads must be >= 1");
    Batch b;
    b.core = std::make_shared<BatchCore>(nb::cast<Model&>(model).open(), int32_arg(n, "n"),
                                         int32_arg(threads, "threads"), parse_device(device));
    b.model = std::move(model);
    return nb::cast(std::move(b));
}

void bind_batch(nb::module_& m) {
    nb::class_<Batch>(m, "Batch",
                      R"(n independent sequences decoded together (Model.batch()): each step reads every weight
once for all of them. Each sequence gives exactly the logits a Context fed the same tokens would
(bit for bit on the CPU), whatever else is in the batch. One thread at a time; the batch itself
runs on `threads` threads.)")
        .def("eval", eval, "tokens"_a,
             nb::sig("def eval(self, tokens: typing.Iterable[int]) -> numpy.ndarray[typing.Any, "
                     "numpy.dtype[numpy.float32]]"),
             R"(Feeds tokens[i] to sequence i, for every i, and returns the logits [n, vocab_size] (a new
array). itera.InvalidArgumentError for an id outside the vocabulary: no sequence changes.)")
        .def("run", run, "feeds"_a,
             nb::sig("def run(self, feeds: typing.Mapping[int, int | typing.Iterable[int]] | "
                     "typing.Iterable[tuple[int, int | typing.Iterable[int]]]) -> "
                     "numpy.ndarray[typing.Any, numpy.dtype[numpy.float32]]"),
             R"(Continuous batching: feeds some sequences any number of tokens together ({seq: ids} or
(seq, ids) pairs, each sequence at most once) and returns the logits after each feed's last token,
one row per feed in the order given. The other sequences are untouched.)")
        .def("logits", logits, "i"_a,
             nb::sig("def logits(self, i: int) -> numpy.ndarray[typing.Any, numpy.dtype[numpy.float32]] | None"),
             "A copy of sequence i's logits after the last call that fed it; None if the last call did not.")
        .def("position", position, "i"_a, nb::sig("def position(self, i: int) -> int"),
             "Tokens sequence i's state covers.")
        .def("reset", reset, "i"_a, nb::sig("def reset(self, i: int) -> None"),
             "Sequence i starts over; the others are untouched.")
        .def("__len__", [](Batch& b) { return b.core->size; })
        .def_prop_ro(
            "size", [](Batch& b) { return b.core->size; }, "The number of sequences.")
        .def_prop_ro(
            "threads", [](Batch& b) { return b.core->threads; }, "CPU threads a step runs on.")
        .def_prop_ro(
            "device", [](Batch& b) { return device_name(itera_batch_device(b.core->batch)); }, "\"cpu\" or \"cuda\".")
        .def_prop_ro(
            "model", [](Batch& b) { return b.model; }, nb::sig("def model(self) -> Model"))
        .def("__repr__", [](Batch& b) {
            return "<itera.Batch of " + std::to_string(b.core->size) + " on " +
                   device_name(itera_batch_device(b.core->batch)) + ", " + std::to_string(b.core->threads) +
                   " threads>";
        });
}

}  // namespace itera_py
