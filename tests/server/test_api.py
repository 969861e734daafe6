"""The OpenAI API as the official `openai` client sees it: completions, streamed completions, the
text byte for byte equal to itera-run's (greedy, and sampled with the same seed), stop strings,
echo, token-id prompts, /v1/models, /health, /metrics."""
import json

import openai
import pytest

from conftest import SLOW, itera_run

PROMPTS = ["and the lord said unto moses ,", "and god said", "in the beginning", "blessed are the"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60 * SLOW, max_retries=0)


def test_completion(client):
    r = client.completions.create(model="itera-kjv", prompt="and god said", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "itera-kjv"
    assert len(r.choices) == 1 and r.choices[0].index == 0 and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 12 and r.usage.total_tokens == 15
    assert r.choices[0].text.startswith(" ")
    print(f"  completion: {r.choices[0].text!r}, usage {r.usage.prompt_tokens}+{r.usage.completion_tokens}")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_itera_run(client, options, prompt):
    expected = itera_run(options, "-p", prompt, "-n", "40", "--greedy")
    r = client.completions.create(model="x", prompt=prompt, max_tokens=40, temperature=0)
    echoed = client.completions.create(model="x", prompt=prompt, max_tokens=40, temperature=0, echo=True)
    # itera-run prints the prompt's text, the pieces, a newline; echo puts the prompt's text first
    assert echoed.choices[0].text + "\n" == expected
    prompt_text = itera_run(options, "-p", prompt, "-n", "0")[:-1]
    assert prompt_text + r.choices[0].text + "\n" == expected
    print(f"  greedy, 40 tokens after {prompt!r}: equal to itera-run --greedy byte for byte")


@pytest.mark.parametrize("seed", [1, 7, 123456789])
def test_seeded_sampling_equals_itera_run(client, options, seed):
    prompt = "and the lord said"
    expected = itera_run(options, "-p", prompt, "-n", "30", "--seed", str(seed))  # temp 0.8, top-k 40, top-p 0.95
    r = client.completions.create(model="x", prompt=prompt, max_tokens=30, temperature=0.8, top_p=0.95, seed=seed,
                                  extra_body={"top_k": 40}, echo=True)
    assert r.choices[0].text + "\n" == expected
    again = client.completions.create(model="x", prompt=prompt, max_tokens=30, temperature=0.8, top_p=0.95,
                                      seed=seed, extra_body={"top_k": 40}, echo=True)
    assert again.choices[0].text == r.choices[0].text
    print(f"  seed {seed}: sampled text equal to itera-run --seed {seed}, and to a second request")


def test_stream(client):
    whole = client.completions.create(model="x", prompt="and god said", max_tokens=25, temperature=0)
    chunks = list(client.completions.create(model="x", prompt="and god said", max_tokens=25, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert "".join(texts) == whole.choices[0].text
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert len(texts) == 25 + 1 and texts[-1] == ""  # one event per token, then the finish reason
    assert chunks[-1].usage.completion_tokens == 25 and chunks[-1].usage.prompt_tokens == 3
    assert len({c.id for c in chunks}) == 1
    print(f"  stream: {len(texts) - 1} events, one per token, joined equal the non-streamed text; usage chunk last")


def test_stop_strings(client):
    full = client.completions.create(model="x", prompt="and the lord said unto moses ,", max_tokens=30,
                                     temperature=0).choices[0].text
    stop = " of egypt"
    assert stop in full
    r = client.completions.create(model="x", prompt="and the lord said unto moses ,", max_tokens=30, temperature=0,
                                  stop=[stop, "zzz"])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="x", prompt="and the lord said unto moses ,", max_tokens=30,
                                         temperature=0, stop=stop, stream=True)
    chunks = [c.choices[0] for c in streamed]
    assert "".join(c.text for c in chunks) == r.choices[0].text and chunks[-1].finish_reason == "stop"
    # a stop string made of the end of one piece and the start of the next
    cut = full.index(" egypt")
    across = full[cut - 3:cut + 4]
    r2 = client.completions.create(model="x", prompt="and the lord said unto moses ,", max_tokens=30, temperature=0,
                                   stop=across)
    assert r2.choices[0].text == full[:full.index(across)]
    print(f"  stop {stop!r} and {across!r}: text cut before them, streamed and not; finish_reason stop")


def test_token_id_prompt_and_echo(client, options):
    ids = [int(x) for x in itera_run(options, "generate", "--ids", "4,20,21", "-n", "5", "--greedy",
                                     "--print-ids").split()]
    r = client.completions.create(model="x", prompt=[4, 20, 21], max_tokens=5, temperature=0)
    text = client.completions.create(model="x", prompt=ids, max_tokens=0, echo=True).choices[0].text
    assert r.choices[0].text == " " + text and r.usage.prompt_tokens == 3  # each piece adds " word"
    zero = client.completions.create(model="x", prompt="and god said", max_tokens=0, echo=True)
    assert zero.choices[0].text == "and god said" and zero.usage.completion_tokens == 0
    print("  prompt as token ids: the same text as itera-run --ids; max_tokens 0 with echo gives the prompt")


def test_allow_unk(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="x", prompt="and god said xyzzy", max_tokens=3)
    assert "xyzzy" in str(e.value)
    r = client.completions.create(model="x", prompt="and god said xyzzy", max_tokens=3, temperature=0,
                                  extra_body={"allow_unk": True}, echo=True)
    assert r.choices[0].text.startswith("and god said <UNK>")
    print("  an unknown word is a 400 naming it; allow_unk maps it to <UNK>")


def test_models_health_metrics(server):
    status, _, body = server.get("/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "itera-kjv"
    status, _, body = server.get("/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, headers, text = server.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ["itera_requests_total{status=\"200\"}", "itera_prompt_tokens_total", "itera_completion_tokens_total",
                 "itera_queue_depth", "itera_active_sequences", "itera_step_seconds_bucket{le=\"+Inf\"}",
                 "itera_step_seconds_count", "itera_time_to_first_token_seconds_count"]:
        assert any(line.startswith(name + " ") for line in text.splitlines()), name
    assert server.metric("itera_completion_tokens_total") > 0
    status, headers, page = server.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "/v1/completions" in page
    print("  /v1/models, /health, /metrics (counters, gauges, histograms) and / answer")
