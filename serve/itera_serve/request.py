"""A completion request read and checked as itera-server reads it (server/request.cpp): the same
fields, defaults, limits, and the same error statuses, types and codes (docs/server.md)."""
import dataclasses
import json

import itera

MAX_JSON_DEPTH = 16  # a completion request nests 3 deep
MAX_STOPS = 4  # as OpenAI
MAX_STOP_BYTES = 64
DEFAULT_MAX_TOKENS = 16  # OpenAI's


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "code"}} with its HTTP status."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    @property
    def type(self):
        return {401: "authentication_error", 404: "not_found_error", 503: "unavailable_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def bad(code, message):
    return ApiError(400, code, message)


@dataclasses.dataclass
class Limits:
    max_tokens: int = 1024
    max_prompt_tokens: int = 4096


@dataclasses.dataclass
class CompletionRequest:
    prompt: list
    max_tokens: int
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0
    stop: list = dataclasses.field(default_factory=list)  # bytes
    stream: bool = False
    echo: bool = False
    include_usage: bool = False

    @property
    def greedy(self):
        return self.temperature == 0.0


def shown(v):
    s = json.dumps(v, ensure_ascii=False)
    return s[:37] + "..." if len(s) > 40 else s


def field(body, name):
    """The field, or None when absent or null (OpenAI clients send null for "not given")."""
    return body.get(name)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer_in(v, name, lo, hi):
    if not (is_int(v) and lo <= v <= hi):
        raise bad("invalid_value" if is_int(v) else "invalid_type",
                  f"'{name}' must be an integer in [{lo}, {hi}], got {shown(v)}")
    return v


def number_in(v, name, lo, hi):
    if not is_number(v):
        raise bad("invalid_type", f"'{name}' must be a number, got {shown(v)}")
    if not lo <= v <= hi:
        raise bad("invalid_value", f"'{name}' must be in [{lo}, {hi}], got {shown(v)}")
    return float(v)


def boolean(v, name):
    if not isinstance(v, bool):
        raise bad("invalid_type", f"'{name}' must be true or false, got {shown(v)}")
    return v


def string_of(v, name):
    if not isinstance(v, str):
        raise bad("invalid_type", f"'{name}' must be a string, got {shown(v)}")
    return v


def depth_of(value):
    """How deep arrays and objects nest (iterative: the parser already bounded recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_json(body):
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
    except RecursionError:
        raise bad("invalid_json", f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise bad("invalid_json", f"the body is not valid JSON: {e}") from None
    if depth_of(value) > MAX_JSON_DEPTH:
        raise bad("invalid_json", f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def ids_of(array, model):
    for v in array:
        if not (is_int(v) and 0 <= v < model.vocab_size):
            raise bad("invalid_value" if is_int(v) else "invalid_type",
                      f"token ids in 'prompt' must be integers in [0, {model.vocab_size - 1}], got {shown(v)}")
        if not model.readable[v]:
            raise bad("invalid_value", f"token id {v} is not in the model's (trimmed) vocabulary")
    return list(array)


def tokenize(text, model, allow_unk):
    if "\0" in text:
        raise bad("invalid_value", "'prompt' holds a NUL character")
    try:
        return model.model.tokenize(text, allow_unknown=allow_unk)
    except itera.UnknownTokenError as e:
        raise bad("unknown_word", f"{e} (\"allow_unk\": true maps words the vocabulary lacks to <UNK>)") from None


def prompt_of(body, model, allow_unk):
    """"prompt": a string, token ids, or a list holding one of those (one prompt)."""
    p = field(body, "prompt")
    if p is None:
        raise bad("missing_field", "'prompt' is required")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        return tokenize(p, model, allow_unk)
    if not isinstance(p, list):
        raise bad("invalid_type", f"'prompt' must be a string or an array of token ids, got {shown(p)}")
    if p and not is_number(p[0]):
        raise bad("unsupported", "'prompt' holds several prompts: send one prompt per request")
    return ids_of(p, model)


def stops_of(v):
    if isinstance(v, str):
        stops = [v]
    elif isinstance(v, list) and len(v) <= MAX_STOPS:
        stops = [string_of(s, "stop") for s in v]
    else:
        raise bad("invalid_type", f"'stop' must be a string or an array of at most 4 strings, got {shown(v)}")
    stops = [s.encode() for s in stops]
    if any(not 1 <= len(s) <= MAX_STOP_BYTES for s in stops):
        raise bad("invalid_value", f"each 'stop' string must have 1 to {MAX_STOP_BYTES} bytes")
    return stops


def refuse_unsupported(body):
    def refuse(name):
        raise bad("unsupported", f"'{name}' is not supported by itera-server")

    for name in ("n", "best_of"):
        v = field(body, name)
        if v is not None and not (is_int(v) and v == 1):
            refuse(name)
    for name in ("presence_penalty", "frequency_penalty"):
        v = field(body, name)
        if v is not None and not (is_number(v) and v == 0):
            refuse(name)
    v = field(body, "logit_bias")
    if v is not None and not (isinstance(v, dict) and not v):
        refuse("logit_bias")
    for name in ("logprobs", "suffix"):
        if field(body, name) is not None:
            refuse(name)


def parse_completion_request(body, model, limits, seed):
    """CompletionRequest from the raw body (bytes); ApiError when it is not one. seed: the request's
    seed when it gives none."""
    j = parse_json(body)
    if not isinstance(j, dict):
        raise bad("invalid_type", f"the body must be a JSON object, got {shown(j)}")
    refuse_unsupported(j)
    for name in ("model", "user"):
        if field(j, name) is not None:
            string_of(j[name], name)
    allow_unk = field(j, "allow_unk")
    prompt = prompt_of(j, model, allow_unk is not None and boolean(allow_unk, "allow_unk"))
    if not prompt:
        raise bad("empty_prompt", "the prompt has no tokens")
    if len(prompt) > limits.max_prompt_tokens:
        raise bad("prompt_too_long", f"the prompt has {len(prompt)} tokens, more than {limits.max_prompt_tokens} "
                  "(max_prompt_tokens)")
    v = field(j, "max_tokens")
    r = CompletionRequest(prompt=prompt, seed=seed, max_tokens=integer_in(v, "max_tokens", 0, limits.max_tokens)
                          if v is not None else min(DEFAULT_MAX_TOKENS, limits.max_tokens))
    if field(j, "temperature") is not None:
        r.temperature = number_in(j["temperature"], "temperature", 0, 2)
    if field(j, "top_p") is not None:
        r.top_p = number_in(j["top_p"], "top_p", 0, 1)
    if field(j, "top_k") is not None:
        r.top_k = integer_in(j["top_k"], "top_k", 0, model.vocab_size)
    v = field(j, "seed")
    if v is not None:
        if not (is_int(v) and 0 <= v < 2**64):
            raise bad("invalid_value" if is_int(v) else "invalid_type",
                      f"'seed' must be an integer in [0, 2^64 - 1], got {shown(v)}")
        r.seed = v
    if field(j, "stop") is not None:
        r.stop = stops_of(j["stop"])
    if field(j, "stream") is not None:
        r.stream = boolean(j["stream"], "stream")
    if field(j, "echo") is not None:
        r.echo = boolean(j["echo"], "echo")
    v = field(j, "stream_options")
    if v is not None:
        if not r.stream:
            raise bad("invalid_value", "'stream_options' needs \"stream\": true")
        if not isinstance(v, dict):
            raise bad("invalid_type", f"'stream_options' must be an object, got {shown(v)}")
        if field(v, "include_usage") is not None:
            r.include_usage = boolean(v["include_usage"], "stream_options.include_usage")
    return r
