// The HTTP side: cpp-httplib's settings (threads, timeouts, body limit, JSON for the errors it
// answers itself) and the routes. Handler threads only parse, enqueue and stream from the
// request's channel; the scheduler does the work.
#pragma once

#include <httplib.h>

#include <chrono>
#include <string>

#include "server/metrics.h"
#include "server/request.h"
#include "server/scheduler.h"
#include "server/served_model.h"

namespace itera::server {

struct HttpOptions {
    std::string api_key;        // not empty: /v1/* and /metrics need "Authorization: Bearer KEY"
    int threads = 0;            // handler threads (each holds one connection while it is open)
    int timeout_s = 600;        // read and write timeout of a connection
    size_t max_body = 1 << 20;  // bytes
    RequestLimits limits;
    // How often a handler waiting for a non-streaming result checks that its client is still there
    // (a streaming handler checks before every piece it writes).
    std::chrono::milliseconds client_check{20};
};

// Sets the server's limits and error bodies, and adds GET /, /health, /metrics, /v1/models and
// POST /v1/completions. Everything passed must outlive the server.
void add_routes(httplib::Server& http, Scheduler& scheduler, const ServedModel& model, Metrics& metrics,
                const HttpOptions& options);

// The page served at GET /, linked into the binary (server/page.html).
std::string_view web_page();

}  // namespace itera::server
