// The server's scheduler without HTTP (also run under ThreadSanitizer by tools/test.sh): requests
// submitted from many threads give the text itera_generate gives alone; the queue bound; a
// cancelled request frees its slot; stop() fails what is left; stop strings; request parsing; and
// the C API's threads: one model shared by a multi-threaded batch and contexts on other threads.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "itera.hpp"
#include "runtime/builtin_model.h"
#include "server/api_error.h"
#include "server/request.h"
#include "server/scheduler.h"
#include "server/stop_strings.h"

namespace {

using namespace itera::server;
using std::chrono::milliseconds;

const ServedModel& builtin() {
    static const ServedModel model =
        serve_model(itera::api::Model::load_memory(itera_builtin_model, itera_builtin_model_size), "itera-kjv");
    return model;
}

CompletionRequest make_request(const std::string& prompt, int32_t max_tokens, uint64_t seed, float temperature) {
    CompletionRequest r;
    r.prompt = builtin().model.tokenize(prompt);
    r.max_tokens = max_tokens;
    r.sampling.seed = seed;
    r.sampling.temperature = temperature;
    return r;
}

// What one request gives alone: itera_generate on a fresh context (a fresh sampler per call).
std::string alone(const CompletionRequest& r) {
    itera::api::Context ctx(builtin().model);
    std::string text;
    ctx.generate(r.prompt, r.max_tokens, r.sampling, [&](int32_t, std::string_view piece) { text += piece; });
    return text;
}

// Waits (bounded) for the end; the text and the finish reason.
std::pair<std::string, std::string> result(Job& job) {
    std::string text;
    for (int i = 0; i < 6000; i++) {
        Channel::Update u = job.channel.receive(milliseconds(10));
        text += u.text;
        if (u.error) return {text, std::string("error: ") + u.error->what()};
        if (u.done) return {text, u.finish_reason};
    }
    return {text, "timed out"};
}

template <class Predicate>
bool eventually(Predicate p) {  // p is called until it holds (at most 3000 times): it may consume
    for (int i = 0; i < 3000; i++) {
        if (p()) return true;
        std::this_thread::sleep_for(milliseconds(2));
    }
    return false;
}

const char* kPrompts[] = {"and god said", "in the beginning", "and the lord said unto moses ,", "blessed are the"};

}  // namespace

TEST_CASE("scheduler: requests from many threads give what each gives alone") {
    Metrics metrics;
    SchedulerOptions o;
    o.parallel = 6;
    o.threads = 2;
    Scheduler scheduler(builtin(), o, metrics);
    std::vector<CompletionRequest> requests;
    for (int i = 0; i < 24; i++)
        requests.push_back(make_request(kPrompts[i % 4], 5 + (i * 11) % 40, 100 + i, i % 3 ? 0.8f : 0.0f));
    std::vector<std::pair<std::string, std::string>> got(requests.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < requests.size(); i++)
        threads.emplace_back([&, i] {
            const std::shared_ptr<Job> job = scheduler.submit(requests[i]);
            REQUIRE(job);
            got[i] = result(*job);
        });
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < requests.size(); i++) {
        CHECK(got[i].first == alone(requests[i]));
        CHECK((got[i].second == "length" || got[i].second == "stop"));
    }
    MESSAGE("24 requests from 24 threads over 6 slots (2 batch threads): each text equals itera_generate alone");
}

TEST_CASE("scheduler: the queue bound, cancelling, stop strings, stopping") {
    Metrics metrics;
    SchedulerOptions o;
    o.parallel = 1;
    o.queue = 1;
    Scheduler scheduler(builtin(), o, metrics);
    const std::shared_ptr<Job> running = scheduler.submit(make_request("and god said", 100000, 1, 0.8f));
    const std::shared_ptr<Job> waiting = scheduler.submit(make_request("and god said", 100000, 2, 0.8f));
    REQUIRE(running);
    REQUIRE(waiting);
    CHECK(scheduler.submit(make_request("and god said", 3, 3, 0.8f)) == nullptr);  // full: the caller says 503
    CHECK(eventually([&] { return metrics.prometheus(1).find("itera_queue_depth 1\n") != std::string::npos; }));

    running->channel.cancel();  // the waiting request gets the slot
    CHECK(eventually([&] { return metrics.prometheus(1).find("itera_queue_depth 0\n") != std::string::npos; }));
    CHECK(eventually([&] { return !waiting->channel.receive(milliseconds(10)).text.empty(); }));
    waiting->channel.cancel();
    CHECK(eventually([&] { return metrics.prometheus(1).find("itera_active_sequences 0\n") != std::string::npos; }));
    CHECK(metrics.prometheus(1).find("itera_requests_cancelled_total 2\n") != std::string::npos);

    CompletionRequest with_stop = make_request("and the lord said unto moses ,", 30, 0, 0.0f);
    const std::string full = alone(with_stop);
    with_stop.stop = {" of egypt"};
    const auto [text, reason] = result(*scheduler.submit(with_stop));
    CHECK(reason == "stop");
    CHECK(text == full.substr(0, full.find(" of egypt")));

    const std::shared_ptr<Job> cut = scheduler.submit(make_request("and god said", 100000, 4, 0.8f));
    REQUIRE(cut);
    scheduler.stop();
    const auto [partial, why] = result(*cut);
    CHECK(why == "error: the server is shutting down");
    CHECK(scheduler.submit(make_request("and god said", 3, 5, 0.8f)) == nullptr);
    MESSAGE("1 slot + 1 queued: a third is refused; cancel frees slot and queue; stop strings; stop() fails the rest");
}

TEST_CASE("stop strings: where one starts, and what may be sent") {
    const std::vector<std::string> stops = {"the end", "amen"};
    CHECK(find_stop("and so the end came", 0, stops) == 7);
    CHECK(find_stop("and so the end came", 8, stops) == std::string::npos);
    CHECK(find_stop("amen, the end", 0, stops) == 0);
    CHECK(releasable("and so the en", stops) == 7);  // "the en" may become "the end"
    CHECK(releasable("and so am", stops) == 7);      // "am" may become "amen"
    CHECK(releasable("and so", stops) == 6);
    CHECK(releasable("a", {"a"}) == 1);  // a one-byte stop is found, never held back
    CHECK(releasable("", stops) == 0);
}

TEST_CASE("request parsing: fields, defaults, errors with status and code") {
    RequestLimits limits;
    const CompletionRequest r = parse_completion_request(
        R"({"prompt": "And God said", "max_tokens": 7, "temperature": 0, "stop": ["a"], "stream": true})", builtin(),
        limits, 42);
    CHECK(r.prompt == builtin().model.tokenize("and god said"));
    CHECK(r.max_tokens == 7);
    CHECK(r.sampling.greedy == 1);
    CHECK(r.sampling.seed == 42);  // the seed given for a request without one
    CHECK(r.stream);
    CHECK(r.stop == std::vector<std::string>{"a"});
    const CompletionRequest d =
        parse_completion_request(R"({"prompt": [4, 20], "seed": 18446744073709551615})", builtin(), limits, 42);
    CHECK(d.max_tokens == 16);
    CHECK(d.sampling.seed == UINT64_MAX);
    CHECK(d.sampling.temperature == doctest::Approx(0.8));
    for (const char* body : {"{", R"({"prompt": "and", "max_tokens": -1})", R"({"prompt": "xyzzy"})",
                             R"({"prompt": []})", R"({"prompt": "and", "n": 2})"}) {
        try {
            parse_completion_request(body, builtin(), limits, 0);
            FAIL("accepted " << body);
        } catch (const ApiError& e) {
            CHECK(e.status() == 400);
            CHECK(std::string(e.type()) == "invalid_request_error");
            CHECK(e.body().find("\"code\":\"" + e.code() + "\"") != std::string::npos);
        }
    }
}

TEST_CASE("C API threads: one model shared by a multi-threaded batch and contexts on other threads") {
    const itera::api::Model& model = builtin().model;
    const std::vector<int32_t> prompt = model.tokenize("and god said");
    itera_sampler_params greedy = itera_sampler_default_params();
    greedy.greedy = 1;
    itera::api::Context reference(model);
    std::string expected;
    reference.generate(prompt, 20, greedy, [&](int32_t, std::string_view piece) { expected += piece; });

    std::vector<std::string> from_contexts(4);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < from_contexts.size(); t++)
        threads.emplace_back([&, t] {
            itera::api::Context ctx(model);
            ctx.generate(prompt, 20, greedy, [&](int32_t, std::string_view piece) { from_contexts[t] += piece; });
        });
    itera_batch_params bp = itera_batch_default_params();
    bp.n_threads = 3;
    itera::api::Batch batch(model, 6, bp);
    std::vector<std::string> from_batch(6);
    std::vector<int32_t> tokens(6);
    std::vector<itera_batch_feed> feeds;
    for (int32_t s = 0; s < 6; s++) feeds.push_back({s, prompt.data(), static_cast<int32_t>(prompt.size())});
    batch.run(feeds);
    for (int step = 0; step < 20; step++) {
        for (int32_t s = 0; s < 6; s++) {
            itera::api::Sampler sampler(greedy);
            tokens[static_cast<size_t>(s)] = sampler.sample(batch.logits(s), model.vocab_size());
            from_batch[static_cast<size_t>(s)] += model.piece(tokens[static_cast<size_t>(s)]);
        }
        if (step + 1 < 20) batch.eval(tokens);
    }
    for (std::thread& t : threads) t.join();
    for (const std::string& s : from_contexts) CHECK(s == expected);
    for (const std::string& s : from_batch) CHECK(s == expected);
    MESSAGE("4 contexts on 4 threads and a 6-sequence batch on 3 threads, one model: the same greedy text");
}
