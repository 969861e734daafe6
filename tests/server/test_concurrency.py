"""Continuous batching as clients see it: 64 clients at once get what each would get alone; a short
request is not stuck behind a long one; past --parallel + --queue the answer is 503 with
Retry-After; a client that leaves (streaming, waiting in the queue, or not streaming) frees its
slot, as /metrics shows."""
import concurrent.futures
import json
import socket
import time

import pytest

from conftest import SLOW

WORDS = ["and the lord said unto moses ,", "and god said", "in the beginning", "blessed are the",
         "and he said", "the children of israel", "and it came to pass", "thus saith the lord"]


def complete(server, body):
    status, _, text = server.post("/v1/completions", body)
    assert status == 200, text
    if not body.get("stream"):
        return json.loads(text)["choices"][0]["text"]
    pieces = []
    for event in text.split("\n\n"):
        if event.startswith("data: ") and event != "data: [DONE]":
            pieces += [c["text"] for c in json.loads(event[6:])["choices"]]
    return "".join(pieces)


def test_64_clients_each_as_alone(server):
    bodies = []
    for i in range(64):
        body = {"prompt": WORDS[i % len(WORDS)], "max_tokens": 10 + (i * 7) % 50, "seed": 1000 + i,
                "temperature": 0 if i % 5 == 0 else 0.9, "top_k": 0 if i % 3 == 0 else 40, "stream": i % 2 == 1}
        bodies.append(body)
    alone = [complete(server, b) for b in bodies]  # one at a time: nothing else runs beside
    steps0, seqs0 = server.metric("itera_steps_total"), server.metric("itera_step_sequences_total")
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        together = list(pool.map(lambda b: complete(server, b), bodies))
    steps = server.metric("itera_steps_total") - steps0
    mean_batch = (server.metric("itera_step_sequences_total") - seqs0) / steps
    mismatched = [i for i in range(64) if together[i] != alone[i]]
    assert not mismatched, f"requests {mismatched} differ when run together"
    assert mean_batch > 2, f"the requests did not run together (mean batch {mean_batch:.2f})"
    print(f"  64 clients at once (16 slots, half streaming, greedy and seeded): each text equal to the same"
          f" request alone; {steps:.0f} steps, mean batch {mean_batch:.1f} sequences")


def open_stream(server, body):
    """A raw connection with the request sent: the test decides when it closes."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30 * SLOW)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return s


def read_until(s, marker):
    """Reads until `marker` appears (bounded by the socket timeout and 1 MB)."""
    buffer = b""
    while marker not in buffer and len(buffer) < 1 << 20:
        chunk = s.recv(65536)
        if not chunk:
            break
        buffer += chunk
    assert marker in buffer, buffer[-500:]
    return buffer


LONG = {"prompt": "and god said", "max_tokens": 100000, "stream": True, "temperature": 0}


def test_short_request_not_behind_long_one(server):
    long = open_stream(server, LONG)
    read_until(long, b"data: ")
    start = time.monotonic()
    short = complete(server, {"prompt": "and god said", "max_tokens": 5, "temperature": 0})
    waited = time.monotonic() - start
    still = long.recv(65536)  # the long one is still streaming after the short one has finished
    assert still and b"[DONE]" not in still
    long.close()
    assert server.wait_metric("itera_active_sequences", lambda v: v == 0) == 0
    print(f"  a 5-token request finished in {waited * 1000:.1f} ms while a 100000-token stream ran beside it")


@pytest.fixture(scope="module")
def one_slot(start_server):
    return start_server("--parallel", "1", "--queue", "1", "--max-tokens", "100000", name="one-slot")


def test_queue_full_503_and_leaving_frees_slots(one_slot):
    s = one_slot
    cancelled0 = s.metric("itera_requests_cancelled_total")
    a = open_stream(s, LONG)  # runs
    read_until(a, b"data: ")
    b = open_stream(s, LONG)  # waits in the queue
    read_until(b, b"200 OK")
    assert s.wait_metric("itera_queue_depth", lambda v: v == 1) == 1
    status, headers, body = s.post("/v1/completions", {"prompt": "and god said", "max_tokens": 3})
    error = json.loads(body)["error"]
    assert status == 503 and headers.get("Retry-After") == "1" and error["code"] == "queue_full"
    assert error["type"] and error["message"]
    print(f"  1 slot + 1 queued: the third request gets 503, Retry-After 1, {error['code']}")

    a.close()  # streaming client leaves: its slot goes to the queued one
    read_until(b, b"data: ")
    assert s.wait_metric("itera_requests_cancelled_total", lambda v: v == cancelled0 + 1) == cancelled0 + 1
    print("  the streaming client left: its slot freed, the queued request runs")

    c = open_stream(s, LONG)  # queued behind b, then leaves while waiting
    read_until(c, b"200 OK")
    assert s.wait_metric("itera_queue_depth", lambda v: v == 1) == 1
    c.close()
    b.close()
    assert s.wait_metric("itera_active_sequences", lambda v: v == 0) == 0
    assert s.wait_metric("itera_queue_depth", lambda v: v == 0) == 0
    assert s.wait_metric("itera_requests_cancelled_total", lambda v: v == cancelled0 + 3) == cancelled0 + 3
    print("  a queued client and a running one left: slot and queue empty, 3 cancellations counted")

    d = open_stream(s, {**LONG, "stream": False})  # not streaming: checked every 20 ms while it waits
    read_until(d, b"200 OK")
    assert s.wait_metric("itera_active_sequences", lambda v: v == 1) == 1
    tokens0 = s.metric("itera_completion_tokens_total")
    d.close()
    assert s.wait_metric("itera_active_sequences", lambda v: v == 0) == 0
    assert s.metric("itera_completion_tokens_total") - tokens0 < 100000
    assert complete(s, {"prompt": "and god said", "max_tokens": 4}) is not None
    print("  a non-streaming client left: slot freed; the server answers the next request")
