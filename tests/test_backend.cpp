// The backend layer (runtime/backend.h): the window rule every Context and Batch shares, and the
// CPU backend running a mixed run (prompts, single tokens, idle sequences, threads) exactly as one
// context per sequence would.
#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "common/error.h"
#include "runtime/batch.h"
#include "runtime/context.h"
#include "runtime/cpu_backend.h"
#include "runtime/devices.h"
#include "runtime/window.h"
#include "tests/model_fixtures.h"

using namespace itera;

TEST_CASE("window: continue while the tokens fit, else one slid window from zero state") {
    Window w(4);
    const int32_t a[] = {1, 2, 3}, b[] = {4}, c[] = {5, 6}, d[] = {7, 8, 9, 10, 11, 12};
    CHECK(w.fresh());
    Span s = w.advance(a, 3, LogitRows::all);
    CHECK((s.pos0 == 0 && s.n == 3 && s.fresh && s.ids[0] == 1 && s.logits == LogitRows::all));
    s = w.advance(b, 1, LogitRows::last);
    CHECK((s.pos0 == 3 && s.n == 1 && !s.fresh && s.ids[0] == 4));
    CHECK(w.room() == 0);
    s = w.advance(c, 2, LogitRows::last);  // {3, 4, 5, 6} from zero state
    CHECK((s.pos0 == 0 && s.n == 4 && s.fresh));
    CHECK(std::vector<int32_t>(s.ids, s.ids + 4) == std::vector<int32_t>{3, 4, 5, 6});
    s = w.advance(d, 6, LogitRows::none);  // more than the window: its last 4
    CHECK(std::vector<int32_t>(s.ids, s.ids + 4) == std::vector<int32_t>{9, 10, 11, 12});
    CHECK((s.fresh && s.logits == LogitRows::none && w.tokens().capacity() == 4));
    // Logits for every token need them to fit; refused without a change.
    CHECK_THROWS_WITH_AS(w.advance(b, 1, LogitRows::all), "1 tokens after 4 exceed max_seq_length 4", Error);
    CHECK(w.size() == 4);
    w.clear();
    CHECK((w.fresh() && w.size() == 0));
    s = w.advance(b, 1, LogitRows::last);
    CHECK((s.fresh && s.pos0 == 0));
    MESSAGE(
        "spans: continue at the next position, slide to the last max_seq_length tokens from zero state, "
        "capacity never above the window");
}

TEST_CASE("cpu backend: a mixed run equals one context per sequence, on 1 and 3 threads") {
    const auto model = test::model_from(test::random_spec(test::small_config(), DType::f32, 91));
    const int32_t V = model->vocab_rows(), P = model->config.max_seq_length;
    for (int32_t threads : {1, 3}) {
        Batch batch(*model, 5, threads);
        std::vector<Context> contexts;
        for (int i = 0; i < 5; i++) contexts.emplace_back(*model);
        std::mt19937 rng(static_cast<uint32_t>(threads));
        int compared = 0;
        bool same = true;
        for (int step = 0; step < 10; step++) {
            std::vector<std::vector<int32_t>> ids(5);
            std::vector<Batch::Feed> feeds;
            for (int32_t s = 0; s < 5; s++) {
                if (rng() % 4 == 0) continue;
                const int32_t n = 1 + static_cast<int32_t>(rng() % static_cast<uint32_t>(P + 3));
                for (int32_t i = 0; i < n; i++) ids[static_cast<size_t>(s)].push_back(static_cast<int32_t>(rng() % 20));
                feeds.push_back({s, ids[static_cast<size_t>(s)].data(), n});
            }
            batch.run(feeds.data(), static_cast<int32_t>(feeds.size()));
            for (int32_t s = 0; s < 5; s++) {
                const auto& v = ids[static_cast<size_t>(s)];
                if (v.empty()) {
                    CHECK(batch.logits(s) == nullptr);
                    continue;
                }
                const float* want =
                    contexts[static_cast<size_t>(s)].eval_tokens(v.data(), static_cast<int32_t>(v.size()));
                const float* got = batch.logits(s);
                for (int32_t r = 0; r < V; r++) same = same && got[r] == want[r];
                same = same && batch.position(s) == contexts[static_cast<size_t>(s)].position();
                compared++;
            }
        }
        CHECK(same);
        MESSAGE(threads << " thread(s): " << compared << " logits rows of runs mixing prompts up to past the window, "
                        << "single tokens and idle sequences equal the contexts' bit for bit");
    }
}

TEST_CASE("context: a saved state after reset is zero; eval_tokens past the window is token by token") {
    const auto model = test::model_from(test::random_spec(test::small_config(), DType::f32, 93));
    const int32_t V = model->vocab_rows();
    Context a(*model), b(*model);
    const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    const float* all = a.eval_tokens(ids.data(), static_cast<int32_t>(ids.size()));
    const float* one = nullptr;
    for (int32_t id : ids) one = b.eval(id);
    bool same = true;
    for (int32_t r = 0; r < V; r++) same = same && all[r] == one[r];
    CHECK(same);
    CHECK_THROWS_WITH_AS(a.eval_tokens(ids.data(), 0), "no tokens to evaluate", Error);
    a.reset();
    std::vector<uint8_t> saved(a.saved_size());
    a.save(saved.data());
    Context c(*model);
    c.eval(7);
    c.restore(saved.data(), saved.size());
    CHECK(c.position() == 0);
    CHECK(c.logits() == nullptr);
    const float* after = c.eval(4);
    Context fresh(*model);
    const float* want = fresh.eval(4);
    for (int32_t r = 0; r < V; r++) same = same && after[r] == want[r];
    CHECK(same);
    MESSAGE("a 10-token prompt past a window of 6 equals 10 evals; a reset context saves a zero state");
}

TEST_CASE("devices: names, parsing, and the cpu through make_backend") {
    CHECK(parse_device("auto") == Device::automatic);
    CHECK(std::string(device_name(Device::cuda)) == "cuda");
    CHECK_THROWS_WITH_AS(parse_device("tpu"), "unknown device 'tpu' (expected cpu, cuda or auto)", Error);
    const auto model = test::model_from(test::random_spec(test::small_config(), DType::f32, 95));
    BackendOptions o;
    o.slots = 2;
    o.threads = 2;
    const auto backend = make_backend(*model, o);
    CHECK(backend->device() == Device::cpu);
    CHECK(backend->slots() == 2);
    CHECK(backend->name().find("2 threads") != std::string::npos);
    o.threads = 0;
    CHECK_THROWS_WITH_AS(make_backend(*model, o), "threads must be 1..1024, got 0", Error);
    o.device = Device::automatic;
    o.threads = 1;
    CHECK(make_backend(*model, o)->slots() == 2);  // the GPU when there is one, else the CPU
}
