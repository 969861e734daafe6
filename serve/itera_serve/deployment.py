"""The Ray Serve deployment: one replica = one itera.Model and one Scheduler (a batch of `parallel`
slots), answering itera-server's HTTP API: POST /v1/completions (whole or streamed), GET /v1/models,
GET /health, and GET /stats (this replica's counters). Every response names the replica that
answered in x-itera-replica / x-itera-node headers.

    serve run serve/config.yaml        (PYTHONPATH must reach serve/ and the itera package)
"""
import asyncio
import json
import os
import secrets
import time

import ray
from ray import serve
from starlette.responses import Response, StreamingResponse

from .request import ApiError, Limits, parse_completion_request
from .scheduler import Job, Scheduler
from .served_model import ServedModel

JSON = "application/json; charset=utf-8"


def replica_name():
    context = serve.get_replica_context()
    replica_id = getattr(context, "replica_id", None)
    return replica_id.unique_id if replica_id is not None else context.replica_tag


@serve.deployment(name="itera", max_ongoing_requests=96, health_check_period_s=2, health_check_timeout_s=10,
                  graceful_shutdown_timeout_s=5)
class IteraDeployment:
    def __init__(self, model="builtin", alias=None, parallel=32, queue=64, threads=1, device="cpu",
                 max_tokens=1024, max_prompt_tokens=4096, max_body=1 << 20):
        self.served = ServedModel(model, alias)
        self.limits = Limits(max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens)
        self.max_body = max_body
        self.scheduler = Scheduler(self.served, parallel=parallel, queue=queue, threads=threads, device=device)
        self.started = int(time.time())
        self.counter = 0
        self.served_requests = 0  # completions answered (200), this replica
        self.identity = {"x-itera-replica": replica_name(), "x-itera-node": ray.get_runtime_context().get_node_id()}

    def __del__(self):
        scheduler = getattr(self, "scheduler", None)
        if scheduler:
            scheduler.stop()

    def check_health(self):
        """Serve's health check: a replica whose scheduler thread died is replaced."""
        if not self.scheduler.alive():
            raise RuntimeError("the scheduler thread is not running")

    def json(self, status, body, headers=None):
        return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type=JSON,
                        headers={**self.identity, **(headers or {})})

    def error(self, e, headers=None):
        return self.json(e.status, e.body(), headers)

    async def __call__(self, request):
        path = request.scope["path"]  # under an application's route_prefix, Serve puts it in root_path
        root = request.scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path
        route = (request.method, path.rstrip("/") or "/")
        if route == ("GET", "/health"):
            return self.json(200, {"status": "ok"})
        if route == ("GET", "/v1/models"):
            return self.json(200, {"object": "list", "data": [
                {"id": self.served.name, "object": "model", "created": self.started, "owned_by": "itera"}]})
        if route == ("GET", "/stats"):
            s = self.scheduler
            return self.json(200, {**self.identity, "pid": os.getpid(), "served": self.served_requests,
                                   "steps": s.steps, "step_sequences": s.step_sequences,
                                   "step_seconds": s.step_seconds, "active": s.active, "queued": len(s.queue),
                                   "cancelled": s.cancelled})
        if route == ("POST", "/v1/completions"):
            try:
                return await self.completions(request)
            except ApiError as e:
                return self.error(e, {"Retry-After": "1"} if e.code == "queue_full" else None)
        return self.error(ApiError(404, "not_found", f"no route {request.method} {request.url.path[:200]} "
                                   "(POST /v1/completions, GET /v1/models, /health, /stats)"))

    def head(self):
        self.counter += 1
        return {"id": f"cmpl-{self.identity['x-itera-replica']}-{self.counter}", "object": "text_completion",
                "created": int(time.time()), "model": self.served.name}

    async def completions(self, http):
        length = http.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise ApiError(413, "body_too_large", f"the request body is larger than {self.max_body} bytes (max_body)")
        body = await http.body()
        if len(body) > self.max_body:
            raise ApiError(413, "body_too_large", f"the request body is larger than {self.max_body} bytes (max_body)")
        request = parse_completion_request(body, self.served, self.limits, secrets.randbits(64))
        echo = self.served.model.detokenize(request.prompt) if request.echo else ""
        job = Job(request, asyncio.get_running_loop(), asyncio.Queue())
        if not self.scheduler.submit(job):
            raise ApiError(503, "queue_full", f"the replica is busy: {self.scheduler.parallel} requests running and "
                           f"{self.scheduler.queue_limit} waiting (parallel, queue)")
        head = self.head()
        if request.stream:
            return StreamingResponse(self.events(job, head, echo), media_type="text/event-stream",
                                     headers={**self.identity, "Cache-Control": "no-cache"})
        try:
            event = await job.events.get()  # a whole response's one event: its end
            if event[0] == "error":
                return self.error(event[1])
            self.served_requests += 1
            usage = {"prompt_tokens": len(request.prompt), "completion_tokens": event[2],
                     "total_tokens": len(request.prompt) + event[2]}
            return self.json(200, {**head, "choices": [choice(echo + event[3], event[1])], "usage": usage})
        finally:
            job.cancelled = True  # a no-op once it finished; frees the slot when the client left

    async def events(self, job, head, echo):
        """Server-sent events: the echoed prompt, each piece, the finish reason, the usage when
        asked for, [DONE]."""
        try:
            if echo:
                yield sse({**head, "choices": [choice(echo, None)]})
            while True:
                event = await job.events.get()
                if event[0] == "text":
                    yield sse({**head, "choices": [choice(event[1], None)]})
                    continue
                if event[0] == "error":
                    yield sse(event[1].body())
                else:
                    self.served_requests += 1
                    yield sse({**head, "choices": [choice("", event[1])]})
                    if job.request.include_usage:
                        n = len(job.request.prompt)
                        yield sse({**head, "choices": [], "usage": {"prompt_tokens": n, "completion_tokens": event[2],
                                                                    "total_tokens": n + event[2]}})
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancelled = True


def choice(text, finish_reason):
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


def sse(body):
    return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"


def app(args):
    """The application `serve run` / `serve deploy` build (serve/config.yaml's import_path); args
    are IteraDeployment's keyword arguments. Replica counts, autoscaling and resources come from the
    config's `deployments:` section."""
    return IteraDeployment.bind(**args)
