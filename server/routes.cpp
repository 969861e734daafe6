#include "server/routes.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <random>

#include "server/api_error.h"
#include "server/openai_json.h"

extern "C" {
extern const unsigned char itera_server_page[];
extern const size_t itera_server_page_size;
}

namespace itera::server {

namespace {

using httplib::DataSink;
using httplib::Request;
using httplib::Response;
using HandlerResponse = httplib::Server::HandlerResponse;

// With a charset, cpp-httplib does not compress JSON: a response is a few hundred bytes, and
// compressing every one (brotli or gzip, when the client offers it) costs the handlers CPU.
constexpr const char* kJson = "application/json; charset=utf-8";

void send_error(Response& res, const ApiError& e) {
    res.status = e.status();
    res.set_content(e.body(), kJson);
}

// Compares in time that depends on the key's length only, not on where the first difference is.
bool same_key(std::string_view given, std::string_view key) {
    unsigned diff = given.size() != key.size();
    for (size_t i = 0; i < key.size(); i++)
        diff |= static_cast<unsigned char>(key[i]) ^ static_cast<unsigned char>(i < given.size() ? given[i] : 0);
    return diff == 0;
}

bool authorized(const Request& req, const std::string& key) {
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view bearer = "Bearer ";
    return header.size() >= bearer.size() && std::string_view(header).substr(0, bearer.size()) == bearer &&
           same_key(std::string_view(header).substr(bearer.size()), key);
}

// With --api-key, a handler that answers 401 unless the request has "Authorization: Bearer KEY".
// It runs after cpp-httplib has read the body (at most --max-body): refusing before that would leave
// the body in the connection, where a keep-alive client's next request would be read after it.
httplib::Server::Handler with_key(const HttpOptions& options, httplib::Server::Handler handler) {
    return [&options, handler = std::move(handler)](const Request& req, Response& res) {
        if (options.api_key.empty() || authorized(req, options.api_key)) return handler(req, res);
        res.set_header("WWW-Authenticate", "Bearer");
        send_error(res, ApiError(401, "invalid_api_key", "a valid \"Authorization: Bearer KEY\" header is required"));
    };
}

// A seed for a request that gives none: random, as itera-run's default.
uint64_t random_seed() {
    thread_local std::mt19937_64 generator{std::random_device{}()};
    return generator();
}

CompletionHead head_for(const ServedModel& model) {
    static std::atomic<uint64_t> counter{0};
    static const uint64_t start = static_cast<uint64_t>(std::time(nullptr));
    char id[48];
    std::snprintf(id, sizeof id, "cmpl-%llx-%llu", static_cast<unsigned long long>(start),
                  static_cast<unsigned long long>(counter++));
    return {id, static_cast<int64_t>(std::time(nullptr)), model.name};
}

bool put(DataSink& sink, const std::string& s) { return sink.write(s.data(), s.size()); }

// Server-sent events: the echoed prompt, each piece as it comes, the finish reason, the usage when
// asked for, [DONE]. The provider returns false (the connection is dropped, the request cancelled)
// when the client is gone.
void stream_response(Response& res, std::shared_ptr<Job> job, CompletionHead head, std::string echo,
                     const HttpOptions& options) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [job, head, echo, check = options.client_check](size_t, DataSink& sink) {
            if (!echo.empty() && !put(sink, stream_event(head, echo, ""))) return false;
            for (;;) {
                Channel::Update u = job->channel.receive(check);
                if (!sink.is_writable()) return false;
                std::string events;  // one event per piece, written together
                for (size_t i = 0, begin = 0; i < u.ends.size(); begin = u.ends[i++])
                    events += stream_event(head, u.text.substr(begin, u.ends[i] - begin), "");
                if (!events.empty() && !put(sink, events)) return false;
                if (!u.done) continue;
                if (u.error) {
                    if (!put(sink, sse_event(u.error->body()))) return false;
                } else {
                    if (!put(sink, stream_event(head, "", u.finish_reason))) return false;
                    const Usage usage{static_cast<int64_t>(job->request.prompt.size()), u.completion_tokens};
                    if (job->request.include_usage && !put(sink, usage_event(head, usage))) return false;
                }
                if (!put(sink, sse_event("[DONE]"))) return false;
                sink.done();
                return true;
            }
        },
        [job](bool) { job->channel.cancel(); });  // a no-op once the request has finished
}

// One JSON body at the end. The status (200) goes out first, so the handler can keep checking
// that the client is still there while it waits; a failure after that (a model computing NaN)
// drops the connection.
void whole_response(Response& res, std::shared_ptr<Job> job, CompletionHead head, std::string echo,
                    const HttpOptions& options) {
    res.set_chunked_content_provider(
        kJson,
        [job, head, echo, check = options.client_check](size_t, DataSink& sink) {
            std::string text = echo;
            for (;;) {
                Channel::Update u = job->channel.receive(check);
                text += u.text;
                if (u.error) {
                    std::fprintf(stderr, "itera-server: %s: %s\n", head.id.c_str(), u.error->what());
                    return false;
                }
                if (u.done) {
                    const Usage usage{static_cast<int64_t>(job->request.prompt.size()), u.completion_tokens};
                    if (!put(sink, completion_json(head, text, u.finish_reason, usage))) return false;
                    sink.done();
                    return true;
                }
                if (!sink.is_writable()) return false;
            }
        },
        [job](bool) { job->channel.cancel(); });
}

void completions(const Request& req, Response& res, Scheduler& scheduler, const ServedModel& model, Metrics& metrics,
                 const HttpOptions& options) {
    try {
        CompletionRequest request = parse_completion_request(req.body, model, options.limits, random_seed());
        std::string echo = request.echo ? model.model.detokenize(request.prompt) : std::string();
        std::shared_ptr<Job> job = scheduler.submit(std::move(request));
        if (!job) {
            metrics.count_refused();
            res.set_header("Retry-After", "1");
            throw ApiError(503, "queue_full",
                           "the server is busy: " + std::to_string(scheduler.options().parallel) +
                               " requests running and " + std::to_string(scheduler.options().queue) +
                               " waiting (--parallel, --queue)");
        }
        if (job->request.stream)
            stream_response(res, std::move(job), head_for(model), std::move(echo), options);
        else
            whole_response(res, std::move(job), head_for(model), std::move(echo), options);
    } catch (const ApiError& e) {
        send_error(res, e);
    }
}

// Bodies for the errors cpp-httplib answers itself (no route, a body over the limit, a request it
// could not read): JSON like ours. Our own errors already have a body and pass through.
HandlerResponse library_error(const Request& req, Response& res, const HttpOptions& options) {
    if (!res.body.empty()) return HandlerResponse::Unhandled;
    switch (res.status) {
        case 404:
            send_error(res, ApiError(404, "not_found",
                                     "no route " + req.method + " " + req.path.substr(0, 200) +
                                         " (POST /v1/completions, GET /v1/models, /health, /metrics, /)"));
            break;
        case 413:
            send_error(res, ApiError(413, "body_too_large",
                                     "the request body is larger than " + std::to_string(options.max_body) +
                                         " bytes (--max-body)"));
            break;
        case 400:
            send_error(res, ApiError(400, "bad_request",
                                     "the request could not be read: malformed HTTP, or not complete within " +
                                         std::to_string(options.timeout_s) + " s (--timeout)"));
            break;
        default:
            send_error(res, ApiError(res.status, "http_error", "HTTP status " + std::to_string(res.status)));
    }
    return HandlerResponse::Handled;
}

}  // namespace

std::string_view web_page() { return {reinterpret_cast<const char*>(itera_server_page), itera_server_page_size}; }

void add_routes(httplib::Server& http, Scheduler& scheduler, const ServedModel& model, Metrics& metrics,
                const HttpOptions& options) {
    const int threads = options.threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    http.set_read_timeout(options.timeout_s);
    http.set_write_timeout(options.timeout_s);
    http.set_payload_max_length(options.max_body);
    http.set_keep_alive_max_count(1000);
    http.set_tcp_nodelay(true);  // a streamed piece goes out at once, not after the last one's ACK
    http.set_logger([&metrics](const Request&, const Response& res) { metrics.count_response(res.status); });
    http.set_error_handler(httplib::Server::HandlerWithResponse(
        [&options](const Request& req, Response& res) { return library_error(req, res, options); }));
    http.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
            std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        std::fprintf(stderr, "itera-server: internal error: %s\n", what.c_str());
        send_error(res, ApiError(500, "internal_error", "internal error: " + what));
    });
    http.Get("/", [](const Request&, Response& res) {
        const std::string_view page = web_page();
        res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    });
    http.Get("/health", [](const Request&, Response& res) { res.set_content("{\"status\":\"ok\"}", kJson); });
    http.Get("/metrics", with_key(options, [&](const Request&, Response& res) {
                 res.set_content(metrics.prometheus(scheduler.options().parallel), "text/plain; version=0.0.4");
             }));
    const int64_t started = static_cast<int64_t>(std::time(nullptr));
    http.Get("/v1/models", with_key(options, [&model, started](const Request&, Response& res) {
                 res.set_content(models_json(model.name, started), kJson);
             }));
    http.Post("/v1/completions", with_key(options, [&](const Request& req, Response& res) {
                  completions(req, res, scheduler, model, metrics, options);
              }));
}

}  // namespace itera::server
