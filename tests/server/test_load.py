"""The server under load (run in every build of tools/test.sh: under ASan/UBSan it must end with no
report and no leak, under TSan with no race): 32 clients send a mix of streamed and whole
completions, seeded and greedy, with stops, requests that leave early and bad requests; every
answer is checked, a sample against the same request alone, the counters against the answers, and
the server must exit 0 on SIGTERM with a clean log."""
import concurrent.futures
import json
import random
import socket

from conftest import SANITIZED, SLOW, stop_and_check

WORDS = ["and the lord said unto moses ,", "and god said", "in the beginning", "blessed are the", "and he said",
         "the children of israel", "and it came to pass", "thus saith the lord"]
LONG_PROMPTS = WORDS[:2]
LONG = 300 if SANITIZED else 600  # past the 128-token window: each token re-runs the window
CLIENTS = 32
PER_CLIENT = 8 if SANITIZED else 25


def text_of(body, raw):
    if not body.get("stream"):
        j = json.loads(raw)
        return j["choices"][0]["text"], j["usage"]["completion_tokens"]
    text, usage = "", None
    for event in raw.split("\n\n"):
        if event.startswith("data: ") and event != "data: [DONE]":
            j = json.loads(event[6:])
            text += "".join(c["text"] for c in j["choices"])
            usage = j.get("usage") or usage
    assert raw.endswith("data: [DONE]\n\n"), raw[-200:]
    return text, usage["completion_tokens"]


def leave_early(server, body):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30 * SLOW)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    s.recv(100)  # the status line: then gone
    s.close()


def client(server, i):
    rng = random.Random(i)
    done = []  # (body, text, completion tokens)
    counts = {"bad": 0, "left": 0}
    for _ in range(PER_CLIENT):
        body = {"prompt": rng.choice(WORDS), "max_tokens": rng.randint(1, 120), "seed": rng.randrange(1 << 32),
                "temperature": rng.choice([0, 0.7, 1.0]), "top_k": rng.choice([0, 40]), "stream": rng.random() < 0.5}
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        if rng.random() < 0.2:
            body["stop"] = rng.choice([" ,", " the", " lord"])
        kind = rng.random()
        if kind < 0.1:
            status, _, raw = server.post("/v1/completions", {**body, "max_tokens": -5})
            assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_value", raw
            counts["bad"] += 1
        elif kind < 0.2:  # a greedy request known to run to its max_tokens: only leaving can end it early
            leave_early(server, {"prompt": rng.choice(LONG_PROMPTS), "max_tokens": LONG, "temperature": 0,
                                 "stream": body["stream"]})
            counts["left"] += 1
        else:
            status, _, raw = server.post("/v1/completions", body)
            assert status == 200, raw
            text, tokens = text_of(body, raw)
            assert tokens <= body["max_tokens"]
            done.append((body, text, tokens))
    return done, counts


def test_load(start_server):
    s = start_server("--parallel", "8", "--queue", "64", "--max-tokens", "2000", name="load")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(LONG_PROMPTS)) as pool:  # no <EOS> before LONG
        for status, _, raw in pool.map(lambda p: s.post("/v1/completions", {"prompt": p, "max_tokens": LONG,
                                                                              "temperature": 0}), LONG_PROMPTS):
            assert status == 200 and json.loads(raw)["choices"][0]["finish_reason"] == "length", raw[-300:]
    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        results = list(pool.map(lambda i: client(s, i), range(CLIENTS)))
    done = [d for r, _ in results for d in r]
    bad = sum(c["bad"] for _, c in results)
    left = sum(c["left"] for _, c in results)
    assert s.wait_metric("itera_active_sequences", lambda v: v == 0) == 0
    assert s.wait_metric("itera_queue_depth", lambda v: v == 0) == 0
    assert s.metric('itera_requests_total{status="400"}') == bad
    assert s.wait_metric("itera_requests_cancelled_total", lambda v: v == left) == left
    # the completions counted are those answered, plus what the clients that left had received
    assert s.metric("itera_completion_tokens_total") >= sum(t for _, _, t in done)
    sample = random.Random(0).sample(done, 12)
    for body, text, _ in sample:
        status, _, raw = s.post("/v1/completions", body)
        assert status == 200 and text_of(body, raw)[0] == text, (body, text, raw)
    steps = s.metric("itera_steps_total")
    mean = s.metric("itera_step_sequences_total") / steps
    stop_and_check(s)
    print(f"  {CLIENTS} clients x {PER_CLIENT} requests: {len(done)} completions checked, {bad} bad requests (400),"
          f" {left} clients left early (all counted cancelled); 12 sampled texts equal the same request alone;"
          f" {steps:.0f} steps, mean batch {mean:.1f}")
