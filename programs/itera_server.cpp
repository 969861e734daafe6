// itera-server: an OpenAI-compatible HTTP server with continuous batching (docs/server.md).
// This file parses the command line, loads the model and prints; server/ does the rest.
#include <pthread.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/cli_parse.h"
#include "common/error.h"
#include "itera.hpp"
#include "runtime/builtin_model.h"
#include "server/routes.h"
#include "server/scheduler.h"
#include "server/served_model.h"
#include "version.h"

namespace {

using itera::Error;
namespace srv = itera::server;

struct Args {
    std::string model_path, alias, host = "127.0.0.1", device = "cpu", api_key, api_key_file;
    int port = 8080, threads_http = 0;
    srv::SchedulerOptions scheduler;
    srv::HttpOptions http;
};

// cpp-httplib listens with a backlog of 5, compiled into the library: 256 clients connecting at
// once would see dropped SYNs (1 s retries). listen() again on the bound socket raises it.
class HttpServer : public httplib::Server {
public:
    void raise_backlog() {
        if (::listen(svr_sock_, SOMAXCONN) != 0) throw Error("listen() on the server socket failed");
    }
};

std::string read_key_file(const std::string& path) {
    std::ifstream in(path);
    std::string key;
    if (!in || !std::getline(in, key)) throw Error("cannot read an API key from '" + path + "'");
    if (key.empty()) throw Error("'" + path + "' holds an empty API key");
    return key;
}

int device_of(const std::string& name) {
    return name == "cuda" ? ITERA_DEVICE_CUDA : name == "auto" ? ITERA_DEVICE_AUTO : ITERA_DEVICE_CPU;
}

int serve(const Args& a) {
    itera::api::Model model = a.model_path.empty()
                                  ? itera::api::Model::load_memory(itera_builtin_model, itera_builtin_model_size)
                                  : itera::api::Model::load_file(a.model_path);
    std::string name = a.alias;
    if (name.empty())
        name = a.model_path.empty() ? "itera-kjv" : std::filesystem::path(a.model_path).filename().string();
    const srv::ServedModel served = srv::serve_model(std::move(model), name);

    srv::SchedulerOptions so = a.scheduler;
    so.device = device_of(a.device);
    srv::HttpOptions ho = a.http;
    ho.api_key = a.api_key_file.empty() ? a.api_key : read_key_file(a.api_key_file);
    ho.threads = a.threads_http > 0 ? a.threads_http : so.parallel + so.queue + 4;

    // SIGINT and SIGTERM are taken by one thread (blocked in all others, which inherit the mask).
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);  // a client that left is a failed write, not the end of the server

    srv::Metrics metrics;
    srv::Scheduler scheduler(served, so, metrics);
    HttpServer http;
    srv::add_routes(http, scheduler, served, metrics, ho);
    const int port = a.port == 0 ? http.bind_to_any_port(a.host) : (http.bind_to_port(a.host, a.port) ? a.port : -1);
    if (port < 0) throw Error("cannot listen on " + a.host + ":" + std::to_string(a.port));
    http.raise_backlog();

    std::printf("itera-server: %s (vocabulary %d, window %d) on %s, %d slots, queue %d, %d HTTP threads\n",
                served.name.c_str(), served.vocab_size, served.max_seq_length, itera_device_name(scheduler.device()),
                so.parallel, so.queue, ho.threads);
    std::printf("itera-server: listening on http://%s:%d\n", a.host.c_str(), port);
    std::fflush(stdout);

    std::thread stopper([&] {
        int signal = 0;
        sigwait(&stop_signals, &signal);
        scheduler.stop();  // waiting handlers get their 503 and end
        // stop() does nothing before listen_after_bind has started: a signal right at start waits for it.
        for (int i = 0; i < 1000 && !http.is_running(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        http.stop();
    });
    const bool listened = http.listen_after_bind();
    if (!listened) pthread_kill(stopper.native_handle(), SIGTERM);  // wake the stopper's sigwait
    stopper.join();
    std::fprintf(stderr, "itera-server: stopped\n");
    if (!listened) throw Error("the server stopped listening");
    return 0;
}

int run(int argc, char** argv) {
    CLI::App app{
        "itera-server: an OpenAI-compatible HTTP server (POST /v1/completions) with continuous batching;\n"
        "without -m it serves the built-in model. docs/server.md"};
    Args a;
    app.add_option("-m,--model", a.model_path, "model file (.itl); default: the built-in model")
        ->check(itera::non_empty());
    app.add_option("--alias", a.alias, "the model's name in responses (default: the file's name, or itera-kjv)");
    app.add_option("--host", a.host, "address to listen on (default 127.0.0.1: this machine only)");
    app.add_option("--port", a.port, "port (default 8080; 0 picks a free one, printed)")->check(CLI::Range(0, 65535));
    app.add_option("--parallel", a.scheduler.parallel, "sequences decoded together (default 64)")
        ->check(CLI::Range(1, 65536));
    app.add_option("--queue", a.scheduler.queue, "requests that may wait for a slot; more get 503 (default 256)")
        ->check(CLI::Range(0, 1 << 20));
    app.add_option("--device", a.device, "cpu (default), cuda or auto (docs/cuda.md)")
        ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
    app.add_option("-t,--threads", a.scheduler.threads, "CPU threads of the batch (default 1)")
        ->check(CLI::Range(1, 1024));
    app.add_option("--threads-http", a.threads_http,
                   "HTTP handler threads, one per open connection (default --parallel + --queue + 4)")
        ->check(CLI::Range(1, 65536));
    auto* key = app.add_option("--api-key", a.api_key, "require \"Authorization: Bearer KEY\" on /v1/* and /metrics")
                    ->check(itera::non_empty());
    app.add_option("--api-key-file", a.api_key_file, "the key from the first line of a file (not shown by ps)")
        ->check(itera::non_empty())
        ->excludes(key);
    app.add_option("--timeout", a.http.timeout_s, "read and write timeout of a connection, seconds (default 600)")
        ->check(CLI::Range(1, 86400));
    app.add_option("--max-tokens", a.http.limits.max_tokens, "the most tokens a request may ask for (default 1024)")
        ->check(CLI::Range(1, 1 << 24));
    app.add_option("--max-prompt-tokens", a.http.limits.max_prompt_tokens,
                   "the longest prompt in tokens (default 4096)")
        ->check(CLI::Range(1, 1 << 24));
    app.add_option("--max-body", a.http.max_body, "the largest request body in bytes (default 1048576)")
        ->check(CLI::Range(size_t{1024}, size_t{1} << 30));
    app.set_version_flag("--version", ITERA_VERSION);
    if (const auto status = itera::parse_command_line(app, argc, argv, "itera-server")) return *status;
    return serve(a);
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
