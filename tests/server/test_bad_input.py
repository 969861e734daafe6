"""Bad input: each is a JSON error {"error": {"message", "type", "code"}} with the right status, and
the server answers the next request. Malformed JSON, wrong types, out-of-range values, unknown
words, empty prompts, a 10 MB body, deep nesting, unknown routes, a slow client past --timeout,
missing or wrong API keys."""
import json
import socket
import time

import pytest

from conftest import SLOW

OK = {"prompt": "and god said", "max_tokens": 2}


def assert_error(status, body, want_status, want_code=None):
    error = json.loads(body)["error"]
    assert status == want_status, (status, body)
    assert set(error) == {"message", "type", "code"} and error["message"] and error["type"], error
    if want_code:
        assert error["code"] == want_code, error
    return error


def assert_serving(server):
    status, _, body = server.post("/v1/completions", OK)
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 2, body


BAD_BODIES = [
    (b'{"prompt": "and god said", ', 400, "invalid_json"),
    (b"not json at all", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b'{"prompt": "and \xff\xfe god"}', 400, "invalid_json"),  # not UTF-8
    (b"[" * 100000, 400, "invalid_json"),  # nesting
    (json.dumps([1, 2]).encode(), 400, "invalid_type"),
    (json.dumps("and god said").encode(), 400, "invalid_type"),
]

BAD_FIELDS = [
    ({"max_tokens": 5}, "missing_field"),
    ({"prompt": 5}, "invalid_type"),
    ({"prompt": {"text": "and"}}, "invalid_type"),
    ({"prompt": ""}, "empty_prompt"),
    ({"prompt": "   \n "}, "empty_prompt"),
    ({"prompt": []}, "empty_prompt"),
    ({"prompt": "and god said xyzzy"}, "unknown_word"),
    ({"prompt": "and\u0000god"}, "invalid_value"),
    ({"prompt": [-1]}, "invalid_value"),
    ({"prompt": [3000]}, "invalid_value"),
    ({"prompt": [1.5]}, "invalid_type"),
    ({"prompt": [1, "and"]}, "invalid_type"),
    ({"prompt": ["and god", "said"]}, "unsupported"),
    ({"prompt": [[4, 5], [6]]}, "unsupported"),
    ({"prompt": "and " * 5000}, "prompt_too_long"),
    ({"max_tokens": -1}, "invalid_value"),
    ({"max_tokens": 100001}, "invalid_value"),
    ({"max_tokens": 10**12}, "invalid_value"),
    ({"max_tokens": 2**70}, "invalid_type"),
    ({"max_tokens": "10"}, "invalid_type"),
    ({"max_tokens": 1.5}, "invalid_type"),
    ({"temperature": "hot"}, "invalid_type"),
    ({"temperature": -0.1}, "invalid_value"),
    ({"temperature": 3}, "invalid_value"),
    ({"top_p": 1.5}, "invalid_value"),
    ({"top_k": -1}, "invalid_value"),
    ({"top_k": 10**6}, "invalid_value"),
    ({"seed": -1}, "invalid_value"),
    ({"seed": 2**64}, "invalid_type"),
    ({"seed": "1"}, "invalid_type"),
    ({"stream": "yes"}, "invalid_type"),
    ({"echo": 1}, "invalid_type"),
    ({"stop": 5}, "invalid_type"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_type"),
    ({"stop": [""]}, "invalid_value"),
    ({"stop": ["x" * 65]}, "invalid_value"),
    ({"stream_options": {"include_usage": True}}, "invalid_value"),
    ({"stream": True, "stream_options": 1}, "invalid_type"),
    ({"n": 2}, "unsupported"),
    ({"best_of": 3}, "unsupported"),
    ({"logprobs": 1}, "unsupported"),
    ({"suffix": "amen"}, "unsupported"),
    ({"presence_penalty": 0.5}, "unsupported"),
    ({"logit_bias": {"5": 1}}, "unsupported"),
    ({"model": 5}, "invalid_type"),
    ({"allow_unk": "yes"}, "invalid_type"),
]


@pytest.mark.parametrize("raw,status,code", BAD_BODIES, ids=lambda v: repr(v)[:30] if isinstance(v, bytes) else None)
def test_bad_body(server, raw, status, code):
    st, _, body = server.post("/v1/completions", raw)
    error = assert_error(st, body, status, code)
    assert_serving(server)
    print(f"  body {raw[:30]!r}: {st} {code}: {error['message'][:80]!r}; the server still answers")


@pytest.mark.parametrize("fields,code", BAD_FIELDS, ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else v)
def test_bad_field(server, fields, code):
    body = {**OK, **fields}
    if "prompt" not in fields and code == "missing_field":
        body.pop("prompt")
    st, _, text = server.post("/v1/completions", body)
    error = assert_error(st, text, 400, code)
    if code == "unknown_word":
        assert "xyzzy" in error["message"]
    assert_serving(server)
    print(f"  {json.dumps(fields)[:50]}: 400 {code}: {error['message'][:90]!r}")


def test_ten_megabyte_body(server):
    st, _, body = server.post("/v1/completions", b'{"prompt": "' + b"and " * (10 << 18) + b'"}')
    assert_error(st, body, 413, "body_too_large")
    assert_serving(server)
    print("  a 10 MB body: 413 body_too_large (limit 1 MiB); the server still answers")


@pytest.mark.parametrize("method,path", [("GET", "/v2/nothing"), ("GET", "/v1/completions"), ("POST", "/health"),
                                         ("GET", "/v1/completions/../../etc/passwd")])
def test_unknown_route(server, method, path):
    st, _, body = (server.get(path) if method == "GET" else server.post(path, OK))
    assert_error(st, body, 404, "not_found")
    assert_serving(server)
    print(f"  {method} {path}: 404 JSON")


@pytest.fixture(scope="module")
def short_timeout(start_server):
    return start_server("--timeout", "1", "--parallel", "2", name="timeout")


@pytest.mark.parametrize("partial", [b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pr",
                                     b"POST /v1/completions HTTP/1.1\r\nHo"])
def test_slow_client_times_out(short_timeout, partial):
    s = socket.create_connection(("127.0.0.1", short_timeout.port), timeout=30 * SLOW)
    s.sendall(partial)
    start = time.monotonic()
    assert_serving(short_timeout)  # others are served while the slow client holds its connection
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    waited = time.monotonic() - start
    s.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply[:200]
    assert_error(400, body.decode(), 400, "bad_request")
    assert_serving(short_timeout)
    print(f"  a client that stops sending ({partial[-12:]!r}): 400 JSON after {waited:.1f} s (--timeout 1),"
          f" others served meanwhile")


@pytest.fixture(scope="module")
def with_key(start_server):
    return start_server("--api-key", "s3cret-key", "--parallel", "2", name="apikey")


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer s3cret-ke", "Bearer s3cret-key2", "s3cret-key",
                                  "Basic s3cret-key", "Bearer "])
def test_api_key_refused(with_key, auth):
    headers = {"Authorization": auth} if auth is not None else {}
    st, h, body = with_key.post("/v1/completions", OK, headers)
    assert_error(st, body, 401, "invalid_api_key")
    assert h.get("WWW-Authenticate") == "Bearer"
    st, _, body = with_key.get("/metrics", headers)
    assert_error(st, body, 401, "invalid_api_key")
    st, _, body = with_key.get("/v1/models", headers)
    assert_error(st, body, 401, "invalid_api_key")
    print(f"  Authorization {auth!r}: 401 on /v1/completions, /v1/models and /metrics")


def test_api_key_accepted(with_key):
    good = {"Authorization": "Bearer s3cret-key"}
    st, _, body = with_key.post("/v1/completions", OK, good)
    assert st == 200 and json.loads(body)["usage"]["completion_tokens"] == 2
    assert with_key.get("/metrics", good)[0] == 200 and with_key.get("/v1/models", good)[0] == 200
    assert with_key.get("/health")[0] == 200 and with_key.get("/")[0] == 200
    print("  the right key: 200; /health and the page need none")


def test_api_key_keep_alive(with_key):
    """A 401 leaves the connection usable: the refused request's body was read, not left in it."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", with_key.port, timeout=30 * SLOW)
    statuses = []
    for key in ["wrong", "s3cret-key", "wrong", "s3cret-key"]:
        c.request("POST", "/v1/completions", json.dumps(OK), {"Authorization": "Bearer " + key})
        r = c.getresponse()
        r.read()
        statuses.append(r.status)
        assert c.sock is not None  # the same connection, still open
    c.close()
    assert statuses == [401, 200, 401, 200]
    print("  one keep-alive connection: 401, 200, 401, 200")
