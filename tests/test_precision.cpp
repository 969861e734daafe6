// Mixed precision: the --precision glob map (matching, later rules win, errors) and the
// --target-size assignment solver against brute force.
#include <doctest/doctest.h>

#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "converter/budget.h"
#include "converter/precision.h"
#include "converter/quantize_spec.h"

using namespace itera;

namespace {

SpecTensor tensor(const std::string& name, std::vector<int64_t> shape) {
    SpecTensor t;
    t.name = name;
    t.shape = std::move(shape);
    return t;
}

// A one-layer model's names: vectors, element-wise matrices and matrix products.
std::vector<SpecTensor> tensors() {
    return {tensor("embedding.weight", {100, 64}),
            tensor("layers.0.ssm.norm.weight", {64}),
            tensor("layers.0.ssm.in_proj.weight", {256, 64}),
            tensor("layers.0.ssm.conv1d.weight", {128, 1, 4}),
            tensor("layers.0.ssm.ssm.C", {128, 8}),
            tensor("layers.0.ssm.ssm.B", {8, 128}),
            tensor("layers.0.moe.ffn.w1.weight", {32, 64}),
            tensor("layers.0.moe.norm.weight", {64}),
            tensor("norm.weight", {64})};
}

std::string error_of(const std::string& map) {
    try {
        resolve_precision(parse_precision(map), tensors());
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("precision: patterns match a name or a dot-separated prefix of it") {
    CHECK(precision_matches("embedding", "embedding.weight"));
    CHECK(precision_matches("embedding.weight", "embedding.weight"));
    CHECK(precision_matches("layers.*.ssm", "layers.0.ssm.in_proj.weight"));
    CHECK(precision_matches("layers.1", "layers.1.moe.ffn.w1.weight"));
    CHECK_FALSE(precision_matches("layers.1", "layers.10.moe.ffn.w1.weight"));  // prefixes end at a dot
    CHECK_FALSE(precision_matches("embed", "embedding.weight"));
    CHECK_FALSE(precision_matches("embedding", "position_embedding.weight"));
    CHECK(precision_matches("*in_proj*", "layers.3.ssm.in_proj.weight"));
}

TEST_CASE("precision: later rules win and block formats skip what cannot hold them") {
    const auto d =
        resolve_precision(parse_precision("layers.*=q4,layers.*.ssm.*=fp16,layers.0.ssm.in_proj=q8"), tensors());
    CHECK(dtype_name(d.at("layers.0.ssm.in_proj.weight")) == "q8");
    CHECK(dtype_name(d.at("layers.0.ssm.conv1d.weight")) == "fp16");  // set by the fp16 rule only
    CHECK(dtype_name(d.at("layers.0.ssm.norm.weight")) == "fp16");
    CHECK(dtype_name(d.at("layers.0.ssm.ssm.B")) == "fp16");
    CHECK(dtype_name(d.at("layers.0.moe.ffn.w1.weight")) == "q4");
    CHECK(d.count("layers.0.moe.norm.weight") == 0);  // a vector: q4 does not fit it
    CHECK(d.count("embedding.weight") == 0);
    CHECK(d.count("norm.weight") == 0);

    // The map feeds choose_dtype: it wins over --quant, --keep wins over it.
    QuantOptions q;
    q.base = DType::q8_0;
    q.dtypes = d;
    CHECK(choose_dtype("layers.0.ssm.in_proj.weight", 2, q) == DType::q8_0);
    CHECK(choose_dtype("layers.0.moe.ffn.w1.weight", 2, q) == DType::q4_0);
    CHECK(choose_dtype("embedding.weight", 2, q) == DType::q8_0);
    q.keep.emplace_back("layers.0.moe.ffn.w1.weight", DType::f32);
    CHECK(choose_dtype("layers.0.moe.ffn.w1.weight", 2, q) == DType::f32);
}

TEST_CASE("precision: bad maps are errors that name the rule") {
    CHECK(error_of("lm_head=fp16").find("matches no tensor (the head is tied") != std::string::npos);
    CHECK(error_of("layers.7=q4").find("'layers.7=q4' matches no tensor") != std::string::npos);
    CHECK(error_of("layers.0.ssm.conv1d.weight=q4").find("read element-wise") != std::string::npos);
    CHECK(error_of("norm=q8").find("read element-wise") != std::string::npos);  // only vectors match
    CHECK(error_of("layers.0.ssm.conv1d.weight=fp16").empty());
    for (const char* bad : {"", "embedding", "=q4", "embedding=q5", "embedding=q4,", "embedding=q4,,norm=fp16"}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(parse_precision(bad), Error);
    }
    CHECK(parse_precision("a=q2,b=q3,c=nf4").size() == 3);
}

TEST_CASE("knapsack: exact against brute force on random instances") {
    std::mt19937 rng(5);
    for (int trial = 0; trial < 300; trial++) {
        const int n = 1 + static_cast<int>(rng() % 5);
        std::vector<std::vector<KnapsackOption>> items(static_cast<size_t>(n));
        for (auto& item : items) {
            const int options = 1 + static_cast<int>(rng() % 4);
            for (int o = 0; o < options; o++)
                item.push_back({64 * (1 + rng() % 8), static_cast<double>(rng() % 1000) / 100.0});
        }
        const uint64_t budget = 64 * (rng() % (8 * static_cast<uint64_t>(n) + 1));
        // Brute force: every combination.
        double best = std::numeric_limits<double>::infinity();
        std::vector<size_t> idx(static_cast<size_t>(n), 0);
        for (;;) {
            uint64_t bytes = 0;
            double cost = 0;
            for (size_t i = 0; i < idx.size(); i++) {
                bytes += items[i][idx[i]].bytes;
                cost += items[i][idx[i]].cost;
            }
            if (bytes <= budget && cost < best) best = cost;
            size_t i = 0;
            while (i < idx.size() && ++idx[i] == items[i].size()) idx[i++] = 0;
            if (i == idx.size()) break;
        }
        const std::vector<int> chosen = solve_knapsack(items, budget, 64);
        CAPTURE(trial);
        if (best == std::numeric_limits<double>::infinity()) {
            CHECK(chosen.empty());
            continue;
        }
        REQUIRE(chosen.size() == items.size());
        uint64_t bytes = 0;
        double cost = 0;
        for (size_t i = 0; i < chosen.size(); i++) {
            bytes += items[i][static_cast<size_t>(chosen[i])].bytes;
            cost += items[i][static_cast<size_t>(chosen[i])].cost;
        }
        CHECK(bytes <= budget);
        CHECK(cost == doctest::Approx(best));
    }
}

TEST_CASE("knapsack: a coarser unit rounds every option up, so the result still fits") {
    // In units of 100 bytes the options take 1 or 2 units: 300 bytes hold 1 + 2, not the 2 + 2
    // that 280 real bytes would need, so the cheaper pair that fits in units is chosen.
    const std::vector<std::vector<KnapsackOption>> items = {{{64, 5.0}, {150, 1.0}}, {{64, 3.0}, {130, 0.0}}};
    CHECK(solve_knapsack(items, 300, 1) == std::vector<int>{1, 1});
    CHECK(solve_knapsack(items, 300, 100) == std::vector<int>{1, 0});
    CHECK(solve_knapsack(items, 127, 1).empty());
    CHECK_THROWS_AS(solve_knapsack(items, 100, 0), Error);
}
