"""A fake of Stripe's Customers API, faithful to what Stripe documents, served over plain HTTP on 127.0.0.1.

localstripe (PyPI) runs, but differs from Stripe exactly where undo relies on Stripe's word: it keeps a metadata key
set to "" (as ""), ignores `metadata=""`, and stores `description=""` as "" rather than unsetting it. This fake does
what the API reference says:

- Requests are form-encoded (`application/x-www-form-urlencoded`) with bracket notation for nested fields
  (`metadata[tier]=gold`, `expand[]=x`, `items[0][price]=p`); authenticated with `Authorization: Bearer <secret key>`
  (401 without it or with another key). A JSON body is refused (400): the API takes no JSON.
- `POST /v1/customers` creates a customer (200, the customer object); `POST /v1/customers/{id}` updates it: a
  parameter not sent is left unchanged, an optional field sent as "" is unset (null), a metadata key sent as "" is
  removed, and `metadata=""` removes them all. An unknown parameter is a 400 naming it.
- `GET /v1/customers/{id}` returns the customer, or for a deleted one `{"id", "object": "customer", "deleted": true}`
  (200); an id never seen is a 404 `resource_missing`. `GET /v1/customers` lists the customers not deleted, newest
  first. `DELETE /v1/customers/{id}` deletes for good (200, the deleted stub); deleting or updating a deleted customer
  is a 404.
- Metadata: at most 50 keys, keys up to 40 characters without square brackets, string values up to 500 characters.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SECRET_KEY = "sk_test_goexFakeStripe4242"
CUSTOMER_FIELDS = ("name", "email", "description", "phone")


class StripeError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": {"type": kind, "message": message}}
        if param is not None:
            self.body["error"]["param"] = param
        if code is not None:
            self.body["error"]["code"] = code
            self.body["error"]["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Bracket notation to nested values, as Stripe reads it: `a[b][c]=v`, `a[]=v` (appended), `a[0][b]=v`."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        path = [head] + ([part for part in rest[:-1].split("][")] if rest else [])
        if rest and not rest.endswith("]") or not head:
            raise StripeError(400, f"Invalid parameter name: {key}", key)
        node: Any = out
        for i, part in enumerate(path):
            last = i == len(path) - 1
            nxt: Any = value if last else ([] if path[i + 1] == "" or path[i + 1].isdigit() else {})
            if isinstance(node, list):
                index = len(node) if part == "" else int(part) if part.isdigit() else -1
                if index < 0:
                    raise StripeError(400, f"Invalid array: {key}", key)
                if index == len(node):
                    node.append(nxt)
                elif last:
                    node[index] = value
                node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, nxt)
                    if not isinstance(node, list | dict):
                        raise StripeError(400, f"Invalid object: {key} mixes a value and nested fields", key)
    return out


class StripeFake:
    """The customers, and the answers Stripe gives about them."""

    def __init__(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, query: str, content_type: str, body: bytes, auth: str
               ) -> tuple[int, dict[str, Any]]:
        try:
            with self.lock:
                return 200, self._route(method, path, query, content_type, body, auth)
        except StripeError as exc:
            return exc.status, exc.body

    def _route(self, method: str, path: str, query: str, content_type: str, body: bytes, auth: str) -> dict[str, Any]:
        if not auth:
            raise StripeError(401, "You did not provide an API key. You need to provide your API key in the "
                                   "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
        if auth != f"Bearer {SECRET_KEY}":
            raise StripeError(401, f"Invalid API Key provided: {auth.removeprefix('Bearer ')[:8]}****")
        if method == "POST" and body and content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise StripeError(400, "Invalid request: request parameters must be form-encoded "
                                   f"(application/x-www-form-urlencoded), not {content_type or 'unlabelled'}")
        params = decode_form(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)) \
            if method == "POST" else decode_form(parse_qsl(query, keep_blank_values=True))
        params.pop("expand", None)
        parts = path.rstrip("/").split("/")
        if parts[:3] != ["", "v1", "customers"] or len(parts) > 4:
            raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
        if len(parts) == 3:
            if method == "POST":
                return self._create(params)
            if method == "GET":
                return self._list(params)
        else:
            cid = parts[3]
            if method == "GET":
                return self._retrieve(cid)
            if method == "POST":
                return self._update(self._live(cid), params)
            if method == "DELETE":
                self._live(cid)
                del self.customers[cid]
                self.deleted.add(cid)
                return {"id": cid, "object": "customer", "deleted": True}
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _live(self, cid: str) -> dict[str, Any]:
        if cid not in self.customers:
            raise StripeError(404, f"No such customer: '{cid}'", "id", "resource_missing")
        return self.customers[cid]

    def _retrieve(self, cid: str) -> dict[str, Any]:
        if cid in self.deleted:
            return {"id": cid, "object": "customer", "deleted": True}
        return self._live(cid)

    def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - {"limit", "email", "starting_after", "ending_before"}
        if unknown:
            raise StripeError(400, f"Received unknown parameter: {sorted(unknown)[0]}", sorted(unknown)[0])
        limit = int(params.get("limit", 10))
        data = [c for c in reversed(self.customers.values())
                if "email" not in params or c["email"] == params["email"]][:limit]
        return {"object": "list", "url": "/v1/customers", "has_more": len(self.customers) > limit, "data": data}

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = f"cus_Fake{next(self.ids):010d}"
        customer = {"id": cid, "object": "customer", "address": None, "balance": 0, "created": int(time.time()),
                    "currency": None, "default_source": None, "delinquent": False, "description": None,
                    "discount": None, "email": None, "invoice_prefix": f"F{cid[-6:]}", "livemode": False,
                    "metadata": {}, "name": None, "phone": None, "preferred_locales": [], "shipping": None,
                    "tax_exempt": "none", "test_clock": None}
        self._apply(customer, params)
        self.customers[cid] = customer
        return customer

    def _update(self, customer: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        self._apply(customer, params)
        return customer

    @staticmethod
    def _apply(customer: dict[str, Any], params: dict[str, Any]) -> None:
        """Check every parameter first (a refused request changes nothing), then apply them."""
        unknown = set(params) - {*CUSTOMER_FIELDS, "metadata"}
        if unknown:
            name = sorted(unknown)[0]
            raise StripeError(400, f"Received unknown parameter: {name}", name)
        for name in CUSTOMER_FIELDS:
            if name in params and not isinstance(params[name], str):
                raise StripeError(400, f"Invalid string: {params[name]!r}", name)
        if params.get("email") and "@" not in params["email"]:
            raise StripeError(400, "Invalid email address: " + params["email"], "email", "email_invalid")
        metadata = params.get("metadata")
        if metadata is not None and metadata != "" and not isinstance(metadata, dict):
            raise StripeError(400, "Invalid object", "metadata")
        if isinstance(metadata, dict):
            for key, value in metadata.items():
                if not isinstance(value, str):
                    raise StripeError(400, f"Invalid value for metadata[{key}]: metadata values must be strings",
                                      f"metadata[{key}]")
                if len(key) > 40 or len(value) > 500:
                    raise StripeError(400, "Metadata keys are at most 40 characters, values at most 500",
                                      f"metadata[{key}]")
            kept = {k: v for k, v in {**customer["metadata"], **metadata}.items() if v != ""}
            if len(kept) > 50:
                raise StripeError(400, "Metadata can have at most 50 keys", "metadata")
        for name in CUSTOMER_FIELDS:
            if name in params:
                customer[name] = params[name] or None   # "" unsets an optional field
        if metadata == "":
            customer["metadata"] = {}
        elif isinstance(metadata, dict):
            customer["metadata"] = kept


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        status, payload = self.server.fake.handle(self.command, parts.path, parts.query,
                                                  self.headers.get("Content-Type", ""), body,
                                                  self.headers.get("Authorization", ""))
        out = json.dumps(payload, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Request-Id", f"req_fake{id(payload):x}")
        self.send_header("Stripe-Version", "2024-06-20")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: StripeFake


class FakeStripe:
    """The fake on 127.0.0.1 (plain HTTP); `url` is its origin, `fake` what it holds."""

    def __init__(self) -> None:
        self.fake = StripeFake()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.fake = self.fake
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
