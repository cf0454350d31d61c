"""The gateway's SCRAM-SHA-256 server side, against scramp's client (a second, independent implementation)."""

from __future__ import annotations

from scramp import ScramClient

from goex_proxy.db.agentauth import Exchange

TOKEN = "bot-token-0123456789"


def run(token_known: str, token_given: str, tamper=lambda final: final) -> tuple[str | None, ScramClient]:
    client = ScramClient(["SCRAM-SHA-256"], "bot", token_given)
    server = Exchange(token_known)
    client.set_server_first(server.first(client.get_client_first()))
    return server.final(tamper(client.get_client_final())), client


def test_the_right_token_is_proven_and_the_server_proves_itself_back() -> None:
    final, client = run(TOKEN, TOKEN)
    assert final is not None and final.startswith("v=")
    client.set_server_final(final)  # raises if the server's signature is wrong


def test_a_wrong_token_or_a_tampered_exchange_fails() -> None:
    assert run(TOKEN, "bot-token-0123456788")[0] is None
    assert run(TOKEN, TOKEN, lambda final: final.replace("c=biws", "c=eSws"))[0] is None     # another gs2 header
    assert run(TOKEN, TOKEN, lambda final: final.replace(",r=", ",r=x"))[0] is None          # another nonce
    assert run(TOKEN, TOKEN, lambda final: final[:-4] + "AAA=")[0] is None                   # another proof
    assert run(TOKEN, TOKEN, lambda final: final.rpartition(",p=")[0])[0] is None            # no proof


def test_channel_binding_and_a_missing_nonce_are_refused() -> None:
    server = Exchange(TOKEN)
    for first in ("p=tls-server-end-point,,n=,r=abc", "n,,n=,", "garbage"):
        try:
            server.first(first)
        except ValueError:
            continue
        raise AssertionError(f"accepted {first!r}")
