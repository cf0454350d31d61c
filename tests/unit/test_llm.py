"""The supervising model client against a scripted OpenAI-compatible server: replies, code and JSON extraction, and
one clear error for each way asking can fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy.agent.llm import LLMError, ask, code_in, json_in
from goex_proxy.config import LLM, Config
from goex_proxy.secretref import SecretRef
from tests.conftest import free_port
from tests.fake_openai import Delay, Error, FakeOpenAI, Hangup

MESSAGES = [{"role": "user", "content": "say hi"}]
KEY = SecretRef(env="TEST_LLM_KEY")


@pytest.fixture
def fake():
    with FakeOpenAI(api_key="sk-test-key") as server:
        yield server


def config(tmp_path: Path, base_url: str, key: SecretRef | None = KEY,
           timeout: float = 5.0) -> Config:
    return Config(file=tmp_path / "config.yaml", state_dir=tmp_path, llm=LLM(base_url, "fake-model", key, timeout))


def test_a_reply_comes_back_with_the_key_and_model_sent(tmp_path, fake, monkeypatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-key")
    fake.script("hi there")
    assert ask(config(tmp_path, fake.base_url), MESSAGES) == "hi there"
    sent = fake.chat_requests()[0]
    assert sent.header("authorization") == "Bearer sk-test-key" and sent.body["model"] == "fake-model"


@pytest.mark.parametrize(("reply", "message"), [
    (Error(500, "the engine broke"), "answered 500: the engine broke"),
    (Error(401), "refused the API key (401)"),
    (Delay(3, "late"), "did not answer within 0.5s"),
    (Hangup(), "cannot reach the model endpoint"),
    ("   ", "gave an empty reply"),
])
def test_each_failure_is_one_clear_sentence(tmp_path, fake, monkeypatch, reply, message) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-key")
    fake.script(reply, reply)  # the client retries once
    with pytest.raises(LLMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ask(config(tmp_path, fake.base_url, timeout=0.5), MESSAGES)


def test_no_model_configured_or_no_key_set(tmp_path, fake, monkeypatch) -> None:
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    with pytest.raises(LLMError, match="no model is configured: add `llm:"):
        ask(Config(file=tmp_path / "config.yaml", state_dir=tmp_path), MESSAGES)
    with pytest.raises(LLMError, match=r"API key \(env:TEST_LLM_KEY\) is not set"):
        ask(config(tmp_path, fake.base_url), MESSAGES)
    assert fake.requests == []


def test_an_unreachable_endpoint(tmp_path) -> None:
    with pytest.raises(LLMError, match="cannot reach the model endpoint"):
        ask(config(tmp_path, f"http://127.0.0.1:{free_port()}/v1", key=None), MESSAGES)


def test_code_is_taken_from_the_longest_fenced_block_or_a_bare_program() -> None:
    reply = "Here:\n```python\nimport os\nprint(os.getcwd())\n```\nor\n```\nprint(1)\n```\n"
    assert code_in(reply) == "import os\nprint(os.getcwd())\n"
    assert code_in("print('bare')") == "print('bare')\n"
    with pytest.raises(LLMError, match="has no Python code"):
        code_in("I cannot help with that.")


def test_json_is_taken_bare_or_fenced() -> None:
    assert json_in('{"steps": []}') == {"steps": []}
    assert json_in('```json\n{"steps": [1]}\n```') == {"steps": [1]}
    with pytest.raises(LLMError, match="not valid JSON"):
        json_in("Sure! {steps: []}")


def test_the_key_can_come_from_the_vault(tmp_path, fake) -> None:
    from goex_proxy.credentials.vault import Vault

    Vault(tmp_path).set("openai", "sk-test-key")
    fake.script("from the vault")
    assert ask(config(tmp_path, fake.base_url, key=SecretRef(vault="openai")), MESSAGES) == "from the vault"
    assert fake.chat_requests()[0].header("authorization") == "Bearer sk-test-key"
