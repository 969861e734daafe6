// server_load: a load generator for itera-server (bench/server_bench.py runs it; docs/server.md).
// C concurrent clients, one thread and one keep-alive connection each, send POST /v1/completions
// for a fixed time after one warm-up request each; it prints completed requests, completion
// tokens/s (from each response's usage), time to first token (streamed: the first event) and
// per-request latency p50/p99, and its own CPU time, so a reader can see it is not the bottleneck.
#include <httplib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/cli_parse.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
    std::string host = "127.0.0.1", prompt = "and the lord said unto moses ,";
    int port = 8080, clients = 1, max_tokens = 100, server_pid = 0;
    double seconds = 5, temperature = 0.8;
    bool stream = false, json = false;
};

struct Sample {
    double latency = 0, first_token = 0;
    long tokens = 0;
};

// The number after "completion_tokens": in the last usage object of a response.
long completion_tokens(const std::string& body) {
    const size_t at = body.rfind("\"completion_tokens\":");
    return at == std::string::npos ? -1 : std::strtol(body.c_str() + at + 20, nullptr, 10);
}

double cpu_seconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// utime + stime of another process (/proc/PID/stat fields 14 and 15); 0 when unreadable.
double cpu_seconds_of(int pid) {
    std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
    if (!f) return 0;
    char buf[1024] = {};
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    const char* p = std::strrchr(buf, ')');  // the command name may hold spaces
    unsigned long long utime = 0, stime = 0;
    if (n == 0 || !p ||
        std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return 0;
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// One request: its latency, time to first event and tokens; tokens < 0 when it failed.
Sample one_request(httplib::Client& client, const Args& a, uint64_t seed) {
    char body[512];
    std::snprintf(body, sizeof body,
                  "{\"prompt\": \"%s\", \"max_tokens\": %d, \"temperature\": %g, \"seed\": %llu, \"stream\": %s%s}",
                  a.prompt.c_str(), a.max_tokens, a.temperature, static_cast<unsigned long long>(seed),
                  a.stream ? "true" : "false", a.stream ? ", \"stream_options\": {\"include_usage\": true}" : "");
    Sample s;
    std::string received;
    const auto start = Clock::now();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body;
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        if (received.empty()) s.first_token = std::chrono::duration<double>(Clock::now() - start).count();
        received.append(data, n);
        return true;
    };
    const httplib::Result r = client.send(req);
    s.latency = std::chrono::duration<double>(Clock::now() - start).count();
    s.tokens = r && r->status == 200 ? completion_tokens(received) : -1;
    if (s.tokens < 0)  // the first line of why, for the reader
        std::fprintf(stderr, "server_load: request failed: %s\n",
                     r ? ("HTTP " + std::to_string(r->status) + " " + received.substr(0, 200)).c_str()
                       : httplib::to_string(r.error()).c_str());
    return s;
}

int run(int argc, char** argv) {
    CLI::App app{"server_load: concurrent clients against itera-server's POST /v1/completions"};
    Args a;
    app.add_option("--host", a.host, "server address (default 127.0.0.1)");
    app.add_option("--port", a.port, "server port")->required();
    app.add_option("-c,--clients", a.clients, "concurrent clients (default 1)")->check(CLI::Range(1, 4096));
    app.add_option("-d,--seconds", a.seconds, "measured time after the warm-up (default 5)")
        ->check(itera::number_in(0.1, 3600));
    app.add_option("-n,--max-tokens", a.max_tokens, "max_tokens of each request (default 100)")
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--temperature", a.temperature, "sampling temperature (default 0.8; 0 = greedy)")
        ->check(itera::number_in(0, 2));
    app.add_option("-p,--prompt", a.prompt, "prompt (plain text: no quotes or backslashes)");
    app.add_option("--server-pid", a.server_pid, "also report this process's CPU time over the measured time");
    app.add_flag("--stream", a.stream, "stream (server-sent events): gives the time to first token");
    app.add_flag("--json", a.json, "print one JSON object");
    if (const auto status = itera::parse_command_line(app, argc, argv, "server_load")) return *status;

    std::vector<std::vector<Sample>> samples(static_cast<size_t>(a.clients));
    std::atomic<int> warm{0}, failed{0};
    std::atomic<bool> go{false};
    Clock::time_point end;
    std::vector<std::thread> threads;
    for (int c = 0; c < a.clients; c++)
        threads.emplace_back([&, c] {
            httplib::Client client(a.host, a.port);
            client.set_keep_alive(true);
            client.set_tcp_nodelay(true);  // else the body waits for the ACK of the headers (Nagle)
            client.set_read_timeout(600);
            uint64_t seed = static_cast<uint64_t>(c) << 32;
            if (one_request(client, a, seed++).tokens < 0) failed++;  // warm-up: the connection is open
            warm++;
            while (!go.load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
            while (Clock::now() < end) {
                const Sample s = one_request(client, a, seed++);
                if (s.tokens < 0)
                    failed++;
                else if (Clock::now() <= end)
                    samples[static_cast<size_t>(c)].push_back(s);
            }
        });
    while (warm.load() < a.clients) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const double cpu0 = cpu_seconds(), server_cpu0 = cpu_seconds_of(a.server_pid);
    const auto start = Clock::now();
    end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.seconds));
    go = true;
    for (std::thread& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const double cpu = cpu_seconds() - cpu0, server_cpu = cpu_seconds_of(a.server_pid) - server_cpu0;

    std::vector<double> latency, first;
    long tokens = 0;
    for (const auto& per_client : samples)
        for (const Sample& s : per_client) {
            latency.push_back(s.latency);
            first.push_back(s.first_token);
            tokens += s.tokens;
        }
    const double window = a.seconds;  // requests finishing after `end` are not counted
    if (a.json) {
        std::printf(
            "{\"clients\": %d, \"stream\": %s, \"max_tokens\": %d, \"requests\": %zu, \"failed\": %d, "
            "\"tokens_per_s\": %.1f, \"requests_per_s\": %.2f, \"latency_p50_ms\": %.3f, \"latency_p99_ms\": %.3f, "
            "\"ttft_p50_ms\": %.3f, \"ttft_p99_ms\": %.3f, \"generator_cpu_s\": %.3f, \"server_cpu_s\": %.3f, "
            "\"wall_s\": %.3f}\n",
            a.clients, a.stream ? "true" : "false", a.max_tokens, latency.size(), failed.load(),
            static_cast<double>(tokens) / window, static_cast<double>(latency.size()) / window,
            1e3 * percentile(latency, 0.5), 1e3 * percentile(latency, 0.99), 1e3 * percentile(first, 0.5),
            1e3 * percentile(first, 0.99), cpu, server_cpu, wall);
    } else {
        std::printf("%d clients, %s, max_tokens %d: %zu requests (%d failed) in %.1f s\n", a.clients,
                    a.stream ? "streamed" : "whole", a.max_tokens, latency.size(), failed.load(), window);
        std::printf("  %.0f completion tokens/s, %.1f requests/s\n", static_cast<double>(tokens) / window,
                    static_cast<double>(latency.size()) / window);
        std::printf("  latency p50 %.2f ms, p99 %.2f ms\n", 1e3 * percentile(latency, 0.5),
                    1e3 * percentile(latency, 0.99));
        if (a.stream)
            std::printf("  first token p50 %.2f ms, p99 %.2f ms\n", 1e3 * percentile(first, 0.5),
                        1e3 * percentile(first, 0.99));
        std::printf("  generator CPU %.2f s over %.2f s wall (%.0f%% of one core)\n", cpu, wall, 100 * cpu / wall);
        if (a.server_pid)
            std::printf("  server CPU %.2f s (%.0f%% of one core)\n", server_cpu, 100 * server_cpu / wall);
    }
    return failed.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
