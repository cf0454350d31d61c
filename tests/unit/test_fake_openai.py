"""The scripted OpenAI fake answers the real `openai` SDK as OpenAI would, and records what it was sent."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.fake_openai import Delay, Error, FakeOpenAI, Hangup

KEY = "sk-test-fake-key"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[OpenAI]:
    with OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0, timeout=5) as sdk:
        yield sdk


def ask(client: OpenAI, text: str = "hi", model: str = "fake-model") -> str | None:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content


def sk_free(message: str) -> bool:
    """The refusal names no key, so a test log never shows one."""
    return "sk-" not in message and KEY not in message


def test_scripted_replies_come_back_in_order_in_the_documented_shape(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.script("print('one')")
    fake.replies.extend(["two"])
    reply = client.chat.completions.create(model="gpt-x", messages=[{"role": "system", "content": "be terse"},
                                                                     {"role": "user", "content": "first"}])
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.created > 0
    assert reply.model == "gpt-x"
    choice = reply.choices[0]
    assert (choice.index, choice.finish_reason, choice.message.role, choice.message.content) == (
        0, "stop", "assistant", "print('one')")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply._request_id is not None and reply._request_id.startswith("req_")
    assert ask(client) == "two"


def test_streaming_yields_chunks_the_sdk_parses(fake: FakeOpenAI, client: OpenAI) -> None:
    text = "for i in range(3):\n    print(i)  # a reply long enough to take several chunks"
    fake.script(text, "after the stream")
    stream = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "go"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert ask(client) == "after the stream"   # the same keep-alive connection still works


def test_a_wrong_or_missing_key_is_refused_like_openai(fake: FakeOpenAI) -> None:
    fake.script("never sent")
    with OpenAI(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(wrong)
    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict) and sk_free(caught.value.body["message"])
    assert {k: caught.value.body[k] for k in ("type", "param", "code")} == {
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    request = urllib.request.Request(f"{fake.base_url}/models")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=5)
    assert missing.value.code == 401
    assert json.loads(missing.value.read())["error"]["code"] == "invalid_api_key"
    assert fake.replies == ["never sent"]


def test_scripted_errors_raise_the_sdks_exceptions(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.script(Error(500), Error(429, headers={"retry-after": "0"}), "fine")
    with pytest.raises(openai.InternalServerError) as server_error:
        ask(client)
    assert server_error.value.body["type"] == "server_error"   # type: ignore[index]
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client)
    assert limited.value.code == "rate_limit_exceeded"
    assert ask(client) == "fine"


def test_a_delayed_reply_trips_the_client_timeout(fake: FakeOpenAI) -> None:
    fake.script(Delay(3, "too late"))
    started = time.monotonic()
    with OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0, timeout=0.2) as impatient:
        with pytest.raises(openai.APITimeoutError):
            ask(impatient)
    assert time.monotonic() - started < 2


def test_a_short_delay_still_answers(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.script(Delay(0.05, "slow but here"))
    assert ask(client) == "slow but here"


def test_a_hangup_is_a_connection_error(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.script(Hangup(), "next")
    with pytest.raises(openai.APIConnectionError):
        ask(client)
    assert ask(client) == "next"


def test_requests_and_prompts_are_recorded(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.script("a", "b")
    ask(client, "first prompt")
    client.chat.completions.create(model="fake-model", messages=[
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}])
    assert [(r.method, r.path) for r in fake.requests] == [("POST", "/v1/chat/completions")] * 2
    first = fake.requests[0]
    assert first.header("authorization") == f"Bearer {KEY}"
    assert first.body["messages"] == [{"role": "user", "content": "first prompt"}]
    assert fake.prompts() == ["first prompt", "rules", "part one", "part two"]
    assert not any("CANARY" in p for p in fake.prompts())


def test_an_exhausted_script_fails_loudly(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.script("only one")
    assert ask(client) == "only one"
    with pytest.raises(openai.InternalServerError, match="ran out of replies"):
        ask(client)


def test_models_are_listed_and_unknown_paths_are_404(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fake-model"]
    assert client.models.retrieve("fake-model").id == "fake-model"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.post("/no/such/thing", cast_to=object, body={})
    assert unknown.value.body["message"] == "Invalid URL (POST /v1/no/such/thing)"   # type: ignore[index]


def test_a_fake_without_a_key_accepts_any_and_knows_its_models() -> None:
    with FakeOpenAI(["ok"], models=["m1", "m2"]) as fake, \
            OpenAI(base_url=fake.base_url, api_key="anything", max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["m1", "m2"]
        assert ask(sdk, model="m2") == "ok"
