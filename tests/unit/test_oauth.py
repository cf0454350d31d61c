"""OAuth2 without the network: token-endpoint replies of each provider, stored token sets, PKCE, consent URLs."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from goex_proxy.credentials.oauth import PROVIDERS, OAuth2, OAuthError, TokenSet, authorization_url, parse_token_reply, pkce_pair

GOOGLE = OAuth2(PROVIDERS["google"], "client-1")
SLACK = OAuth2(PROVIDERS["slack"], "client-2", scopes=("chat:write", "channels:read"))
PREVIOUS = TokenSet("old-access", "old-refresh", 100.0)


def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one() -> None:
    """Google answers a refresh with an access token only; the refresh token we had stays."""
    body = json.dumps({"access_token": "new-access", "expires_in": 3599, "token_type": "Bearer"}).encode()
    tokens = parse_token_reply(GOOGLE, 200, body, PREVIOUS, now=1000.0)
    assert tokens == TokenSet("new-access", "old-refresh", 4599.0)


def test_rotated_refresh_tokens_replace_the_old_one() -> None:
    body = json.dumps({"ok": True, "access_token": "xoxe.xoxb-1", "refresh_token": "xoxe-1-new", "expires_in": 43200})
    assert parse_token_reply(SLACK, 200, body.encode(), PREVIOUS, now=0.0).refresh_token == "xoxe-1-new"


def test_github_form_encoded_reply_is_understood() -> None:
    tokens = parse_token_reply(OAuth2(PROVIDERS["github"], "c"), 200, b"access_token=gho_abc&token_type=bearer",
                               TokenSet())
    assert tokens.access_token == "gho_abc" and tokens.expires_at is None


@pytest.mark.parametrize(("status", "body", "message"), [
    (400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
     "invalid_grant (Token has been expired or revoked.)"),
    (200, {"ok": False, "error": "invalid_refresh_token"}, "invalid_refresh_token"),  # Slack: 200 with ok:false
    (200, {"error": "bad_verification_code"}, "bad_verification_code"),              # GitHub: 200 with error
    (500, {}, "HTTP 500"),
    (200, {"token_type": "Bearer"}, "no access_token in the reply"),
])
def test_refusals_name_what_the_endpoint_said(status: int, body: dict[str, object], message: str) -> None:
    with pytest.raises(OAuthError) as err:
        parse_token_reply(SLACK, status, json.dumps(body).encode(), PREVIOUS)
    assert message in str(err.value)
    assert "old-refresh" not in str(err.value)


@pytest.mark.parametrize("words", [0, 1, 5])
def test_a_long_refusal_is_cut_between_words_never_through_a_token_it_quotes(words: int) -> None:
    """An endpoint that quotes the refresh token in a long error_description: the message is cut short, but never
    inside the token (a piece of it would pass the scrubber, which replaces whole spellings)."""
    token = "1//0g" + "Rt" * 150
    said = "word " * words * 37 + "bad token " + token + " was sent"
    with pytest.raises(OAuthError) as err:
        parse_token_reply(SLACK, 400, json.dumps({"error": "invalid_grant", "error_description": said}).encode(),
                          PREVIOUS)
    message = str(err.value)
    assert "invalid_grant" in message and "1//0gRtRt" not in message and message.endswith("…)"), message


def test_stored_sets_round_trip_and_a_pasted_refresh_token_is_one() -> None:
    assert TokenSet.loads(PREVIOUS.dumps()) == PREVIOUS
    assert TokenSet.loads("1//0gPasted-refresh-token\n") == TokenSet(refresh_token="1//0gPasted-refresh-token")
    assert TokenSet("a", "r", 160.0).fresh(now=99.0, margin=60) and not TokenSet("a", "r", 160.0).fresh(101.0, 60)
    assert TokenSet("a", "r", None).fresh(1e12, 60) and not TokenSet("", "r", None).fresh(0, 60)


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128  # RFC 7636 section 4.1
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert pkce_pair()[0] != verifier


def test_consent_url_carries_pkce_state_and_the_provider_scope_separator() -> None:
    url = authorization_url(SLACK, "http://127.0.0.1:5000/callback", "st4te", "ch4llenge")
    assert url.startswith("https://slack.com/oauth/v2/authorize?")
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert q == {"response_type": "code", "client_id": "client-2", "redirect_uri": "http://127.0.0.1:5000/callback",
                 "state": "st4te", "code_challenge": "ch4llenge", "code_challenge_method": "S256",
                 "scope": "chat:write,channels:read"}
    google = parse_qs(urlsplit(authorization_url(GOOGLE, "http://x/cb", "s", "c")).query)
    assert google["access_type"] == ["offline"] and google["prompt"] == ["consent"]
