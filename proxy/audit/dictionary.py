"""The fixed preset dictionaries stored headers and bodies are compressed with: never edited, only added to (a blob
names the one it was compressed with, so rows written years ago still decompress)."""

from __future__ import annotations

import hashlib

# Version 1: what the headers and small JSON bodies of API calls are made of (header names and their common values
# as `redacted_headers_json` writes them, JSON punctuation and keys). Deflate finds later bytes at shorter distances,
# so the commonest come last. FROZEN: its sha256 is in FROZEN, checked by the tests.
_V1_PARTS = (
    '"error": {"message": "", "type": "invalid_request_error", "code": null}, "errors": [{"code": "invalid"}], ',
    '"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "status": "open", ',
    '"object": "list", "data": [], "has_more": false, "next_page_token": "", "nextPageToken": "", ',
    '"html_url": "https://github.com/", "url": "https://api.github.com/repos/", "node_id": "", "login": "", ',
    '"messages": [{"role": "user", "content": ""}], "model": "gpt-4o-mini", "choices": [{"index": 0, ',
    '"channel": "", "text": "", "ts": "", "message": {"type": "message", "text": "", "user": ""}, ',
    '{"ok": true, "ok": false, "error": "", "id": "", "name": "", "title": "", "body": "", "items": [], ',
    '"email": "", "tags": [], "description": "", "value": "", "type": "", "user": {"login": "", "id": ',
    '["Access-Control-Allow-Origin", "*"], ["Vary", "Accept-Encoding"], ["Connection", "keep-alive"], ',
    '["Strict-Transport-Security", "max-age=31536000; includeSubDomains"], ["X-Content-Type-Options", "nosniff"], ',
    '["Transfer-Encoding", "chunked"], ["Content-Encoding", "gzip"], ["Server", "nginx"], ["Server", "AmazonS3"], ',
    '["ETag", "W/\\""], ["Last-Modified", ""], ["Location", "https://"], ["x-amz-request-id", ""], ',
    '["x-amz-version-id", ""], ["X-RateLimit-Limit", "5000"], ["X-RateLimit-Remaining", ""], ',
    '["X-RateLimit-Reset", ""], ["X-Request-Id", ""], ["Retry-After", ""], ["Set-Cookie", "<redacted>"], ',
    '["Cookie", "<redacted>"], ["X-Api-Key", "<redacted>"], ["Proxy-Authorization", "<redacted>"], ',
    '["Accept-Language", "en-US,en;q=0.9"], ["Connection", "close"], ["Content-Type", "text/plain"], ',
    '["Content-Type", "application/x-www-form-urlencoded"], ["Content-Type", "text/html; charset=utf-8"], ',
    '["User-Agent", "curl/8.5.0"], ["User-Agent", "OpenAI/Python 1."], ["User-Agent", "Boto3/1."], ',
    '["User-Agent", "python-requests/2.32.3"], ["User-Agent", "python-httpx/0.28.1"], ["Accept", "*/*"], ',
    '["Accept", "application/json"], ["Accept-Encoding", "gzip, deflate, br"], ["Accept-Encoding", "gzip, deflate"], ',
    '["Cache-Control", "no-cache"], ["Cache-Control", "private, max-age=0"], ["Cache-Control", "no-store"], ',
    '["Authorization", "Bearer <redacted>"], ["Authorization", "<redacted>"], ["Content-Type", "application/json"], ',
    '[["Host", "api.'
    '.com"], ["Content-Length", "'
    '"], ["Date", "Mon, 01 Jan 2026 00:00:00 GMT"], ["Date", "Tue, 02 Feb 2026 10:00:00 GMT"], ',
    '["Date", "Wed, 03 Mar 2026 20:00:00 GMT"], ["Date", "Thu, 04 Apr 2026 00:00:00 GMT"], ',
    '["Date", "Fri, 05 May 2026 00:00:00 GMT"], ["Date", "Sat, 06 Jun 2026 00:00:00 GMT"], ',
    '["Date", "Sun, 07 Jul 2026 00:00:00 GMT"], ["Date", "Mon, 08 Aug 2026 00:00:00 GMT"], ',
    '["Date", "Tue, 09 Sep 2026 00:00:00 GMT"], ["Date", "Wed, 10 Oct 2026 00:00:00 GMT"], ',
    '["Date", "Thu, 11 Nov 2026 00:00:00 GMT"], ["Date", "Fri, 12 Dec 2026 00:00:00 GMT"], ',
    '["X-Goex-Request-Id", "'
    '"], ["Content-Type", "application/json; charset=utf-8"], ["Content-Length", "',
)
DICTIONARY_V1 = "".join(_V1_PARTS).encode()
#: The dictionaries by version, as blobs name them.
DICTIONARIES = {1: DICTIONARY_V1}
#: The sha256 each version must keep (a changed dictionary would make every blob compressed with it unreadable).
FROZEN = {1: "57c0de562f168f96706deb189eb6cef3db6d66d8c1d65f32ce3b974e3b10d1da"}


def fingerprint(version: int) -> str:
    return hashlib.sha256(DICTIONARIES[version]).hexdigest()
