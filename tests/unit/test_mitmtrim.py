"""mitmproxy as `run` trims it (`mitmtrim.trim`): the header look-ups it replaces give what mitmproxy's give, for any
fields and any name, and refuse what mitmproxy's refuse; options and hooks read as mitmproxy reads them; sends joined
write the same bytes in the same order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mitmproxy import connection, http
from mitmproxy.proxy import commands, tunnel

from goex_proxy import mitmtrim

mitmtrim.trim()


class Original(http.Headers):
    """Headers with mitmproxy's own look-ups, as they were before `trim`."""


for (cls, name), before in mitmtrim.REPLACED.items():
    if cls is http.Headers:
        setattr(Original, name, before)

NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"X-A", b"x-\xc3\xa9", b"X-\xc3\x89", b"\xff",
         b"", b"Transfer-Encoding"]
fields = st.lists(st.tuples(st.sampled_from(NAMES) | st.binary(max_size=6), st.binary(max_size=12)), max_size=8)
keys = (st.sampled_from(NAMES) | st.binary(max_size=6)
        | st.sampled_from(NAMES).map(lambda n: n.decode("utf-8", "surrogateescape"))
        | st.text(max_size=6) | st.sampled_from(["x-é", "X-É", "\udcff", "HoSt"]))


def outcome(fn: Any) -> Any:
    try:
        return "value", fn()
    except Exception as exc:  # noqa: BLE001 - what is compared is which exception, if any
        return "raised", type(exc)


@given(fields, keys)
def test_every_look_up_gives_what_mitmproxys_gives(pairs: list[tuple[bytes, bytes]], key: str | bytes) -> None:
    ours, theirs = http.Headers(pairs), Original(pairs)
    assert type(ours).get_all is not type(theirs).get_all  # the replacement against mitmproxy's own
    assert outcome(lambda: ours.get_all(key)) == outcome(lambda: theirs.get_all(key))
    assert outcome(lambda: ours.get(key)) == outcome(lambda: theirs.get(key))
    assert outcome(lambda: ours.get(key, "-")) == outcome(lambda: theirs.get(key, "-"))
    assert outcome(lambda: key in ours) == outcome(lambda: key in theirs)
    assert outcome(lambda: ours[key]) == outcome(lambda: theirs[key])


def test_what_is_not_a_name_is_refused_alike() -> None:
    ours, theirs = http.Headers([(b"Host", b"x")]), Original([(b"Host", b"x")])
    for key in (None, 1, 1.5, ["Host"]):
        for look in (lambda h, k: h.get_all(k), lambda h, k: h.get(k), lambda h, k: k in h, lambda h, k: h[k]):
            assert outcome(lambda look=look, key=key: look(ours, key)) == \
                outcome(lambda look=look, key=key: look(theirs, key)), key


def test_keyword_arguments_are_taken_and_refused_alike() -> None:
    """`Mapping.get(self, key, default=None)` and `Mapping.__contains__(self, key)` name their argument `key`; a caller
    that passes it by name must get mitmproxy's answer, and `name=` must be refused as mitmproxy refuses it."""
    ours, theirs = http.Headers([(b"Host", b"x")]), Original([(b"Host", b"x")])
    calls = (lambda h: h.get(key="Host"), lambda h: h.get(key="nope", default="-"), lambda h: h.get("Host", default=1),
             lambda h: h.get(name="Host"), lambda h: h.__contains__(key="Host"), lambda h: h.__contains__(name="Host"),
             lambda h: h.get_all(name="Host"), lambda h: h.get_all(key="Host"))
    for i, call in enumerate(calls):
        assert outcome(lambda call=call: call(ours)) == outcome(lambda call=call: call(theirs)), i


odd = st.none() | st.integers(0, 1) | st.sampled_from(["host", "Host", "x"]) | st.sampled_from(NAMES) | st.binary(max_size=3)
odd_fields = st.lists(st.tuples(odd) | st.tuples(odd, odd) | st.tuples(odd, odd, odd), max_size=5)


@given(odd_fields, st.sampled_from(NAMES) | st.sampled_from(["host", "x"]))
@example([(b"Host", "text"), (b"x",)], "host")  # a value not bytes, then a field not a pair
@example([(b"Host", None), (None, b"x")], "host")
@example([(b"Host", b"x"), (b"y", b"z", b"w")], "host")
def test_fields_reassigned_to_anything_are_read_or_refused_alike(pairs: list[tuple[Any, ...]], key: str | bytes) -> None:
    """`fields` is a plain attribute: whatever is put there, a look-up gives what mitmproxy's gives, or raises the same
    exception (mitmproxy finds every field's name before it decodes a value)."""
    ours, theirs = http.Headers(), Original()
    ours.fields = theirs.fields = tuple(pairs)
    assert outcome(lambda: ours.get_all(key)) == outcome(lambda: theirs.get_all(key))
    assert outcome(lambda: ours.get(key)) == outcome(lambda: theirs.get(key))
    assert outcome(lambda: key in ours) == outcome(lambda: key in theirs)
    assert outcome(lambda: ours[key]) == outcome(lambda: theirs[key])


HEADS = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Content-Encoding",
         b"Cookie", b"Set-Cookie", b"Proxy-Authorization", b"Authorization", b"Expect", b"content-type"]
VALUES = [b"", b"0", b"5", b" 5", b"5, 5", b"+5", b"-1", b"chunked", b"gzip, chunked", b"identity", b"close",
          b"keep-alive, Upgrade", b"websocket", b"gzip", b"br", b"a=b; c=d", b"ex\xc3\xa9mple.com:80", b"100-continue"]
head_fields = st.lists(st.tuples(st.sampled_from(HEADS) | st.sampled_from(HEADS).map(bytes.upper),
                                 st.sampled_from(VALUES) | st.binary(max_size=6)), max_size=6)


def _reads(cls: type[http.Headers], pairs: list[tuple[bytes, bytes]], method: bytes, version: bytes,
           status: int) -> list[Any]:
    """What mitmproxy's own code reads from a request and response with these fields: body sizes (smuggling),
    connection close, Host, cookies, decoded content, websocket and form checks, HTTP/1 bytes."""
    from mitmproxy.net.http.http1 import assemble, read  # noqa: PLC0415
    from mitmproxy.test import tutils  # noqa: PLC0415

    def req() -> http.Request:
        r = tutils.treq(method=method, http_version=version, content=b"\x1f\x8b\x00 body")
        r.headers = cls(pairs)
        r.trailers = cls(pairs)
        return r

    def resp() -> http.Response:
        r = tutils.tresp(status_code=status, http_version=version, content=b"\x1f\x8b\x00 body")
        r.headers = cls(pairs)
        return r

    reads = (lambda: read.expected_http_body_size(req()), lambda: read.expected_http_body_size(req(), resp()),
             lambda: read.connection_close(version, cls(pairs)), lambda: read.get_header_tokens(cls(pairs), "Connection"),
             lambda: req().host_header, lambda: req().pretty_host, lambda: req().pretty_url,
             lambda: list(req().cookies.items(multi=True)), lambda: list(resp().cookies.items(multi=True)),
             lambda: req().get_content(strict=False), lambda: resp().get_text(strict=False),
             lambda: req().urlencoded_form.fields, lambda: req().multipart_form.fields,
             lambda: assemble.assemble_request(req()), lambda: assemble.assemble_response(resp()),
             lambda: bytes(cls(pairs)), lambda: cls(pairs).items(multi=True).__class__,
             lambda: dict(cls(pairs).items()), lambda: list(cls(pairs)), lambda: len(cls(pairs)),
             lambda: cls.from_state(cls(pairs).get_state()).fields, lambda: cls(pairs).copy().fields)
    return [outcome(r) for r in reads]


@given(head_fields, st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT"]), st.sampled_from([b"HTTP/1.0", b"HTTP/1.1",
       b"HTTP/2.0"]), st.sampled_from([100, 101, 200, 204, 304]))
def test_mitmproxys_own_reads_give_what_they_gave(pairs: list[tuple[bytes, bytes]], method: bytes, version: bytes,
                                                   status: int) -> None:
    """mitmproxy's own code reads headers through the replaced look-ups (body size, Host, cookies, encodings...):
    with them it reads what it read with its own."""
    assert _reads(http.Headers, pairs, method, version, status) == _reads(Original, pairs, method, version, status)


ops = st.lists(st.tuples(st.sampled_from(["set", "set_all", "insert", "del", "pop", "setdefault", "update", "add",
                                          "fields", "kwargs"]),
                         st.sampled_from(NAMES) | st.sampled_from(["host", "X-É", "\udcff", "content_length"]),
                         st.sampled_from([b"", b"v", b"5", "w", "\udcff"])), max_size=6)


def _mutate(h: http.Headers, op: str, key: Any, value: Any) -> Any:
    if op == "set":
        h[key] = value
    elif op == "set_all":
        h.set_all(key, [value, value])
    elif op == "insert":
        h.insert(0, key, value)
    elif op == "del":
        del h[key]
    elif op == "pop":
        return h.pop(key)
    elif op == "setdefault":
        return h.setdefault(key, value)
    elif op == "update":
        h.update({key: value})
    elif op == "add":
        h.add(key, value)
    elif op == "fields":
        h.fields = ((http._always_bytes(key), http._always_bytes(value)), *h.fields)
    elif op == "kwargs":
        return type(h)(h.fields, **{str(key): value}).fields
    return None


@given(fields, ops, keys)
def test_look_ups_after_any_mutation_give_what_mitmproxys_give(pairs: list[tuple[bytes, bytes]],
                                                              steps: list[tuple[str, Any, Any]], key: Any) -> None:
    """Headers changed in place (`set_all`, `insert`, `del`, `pop`, `setdefault`, `update`, `add`, `fields`
    reassigned, `Headers(**kwargs)`), several of which look up through the replaced methods, end alike and read
    alike."""
    ours, theirs = http.Headers(pairs), Original(pairs)
    for op, name, value in steps:
        step = (op, name, value)
        assert outcome(lambda step=step: _mutate(ours, *step)) == outcome(lambda step=step: _mutate(theirs, *step))
        assert ours.fields == theirs.fields
        for look in (name, key):
            assert outcome(lambda look=look: ours.get(look)) == outcome(lambda look=look: theirs.get(look))
            assert outcome(lambda look=look: look in ours) == outcome(lambda look=look: look in theirs)
            assert outcome(lambda look=look: ours.get_all(look)) == outcome(lambda look=look: theirs.get_all(look))


def test_every_option_reads_as_mitmproxys_and_a_mutable_one_is_still_a_copy() -> None:
    from mitmproxy import options, optmanager

    theirs = mitmtrim.REPLACED[(optmanager._Option, "current")]
    opts = options.Options()
    opts.update(listen_port=8081, ignore_hosts=["example.com"], ssl_insecure=True)  # set ones, beside the defaults
    for option in opts._options.values():
        assert option.current() == theirs(option), option.name
    held = opts._options["ignore_hosts"]
    held.current().append("changed")
    assert held.current() == ["example.com"] and held.current() is not held.value


def test_a_hooks_arguments_are_its_fields_as_mitmproxy_reads_them() -> None:
    from mitmproxy import hooks
    from mitmproxy.addonmanager import LoadHook
    from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
    from mitmproxy.proxy.server_hooks import ClientConnectedHook
    from mitmproxy.test import tflow

    theirs = mitmtrim.REPLACED[(hooks.Hook, "args")]
    flow = tflow.tflow(resp=True)
    made = [HttpRequestHook(flow), HttpResponseHook(flow), hooks.UpdateHook([flow]), hooks.DoneHook(),
            ClientConnectedHook(flow.client_conn), LoadHook(None)]  # type: ignore[arg-type]
    for hook in made * 2:  # the second time from the names kept for its class
        assert hook.args() == theirs(hook) and [id(a) for a in hook.args()] == [id(a) for a in theirs(hook)]


def test_header_names_an_agent_chose_are_not_kept_by_the_look_ups() -> None:
    """`inject.resign` reads an AWS request's headers by name (`headers.items()`: a look-up for each name the agent
    sent), so every name an agent chose went into `_KEYS`, with its lowered bytes, until 4096 were kept: each up to
    `limits.max_header_bytes` (64 KiB), about 512 MiB that an agent pins in each worker with 4096 requests."""
    from mitmproxy.test import tutils

    from goex_proxy.addons import inject
    from goex_proxy.credentials.sigv4 import AwsKeys, SigningError

    def kept() -> int:
        return sum(len(name) + len(key) for names in mitmtrim._KEYS.values() for name, key in names.items())

    before = kept()
    for i in range(32):
        req = tutils.treq(headers=http.Headers([(b"x-%04d-" % i + b"a" * 60_000, b"1")]))
        try:
            inject.resign(req, AwsKeys("AKIAREALKEY000000001", "real/secret+key", ""))
        except SigningError:
            pass  # unsigned: refused, after its names were read
    assert kept() - before < 256 * 1024, f"{(kept() - before) // 1024} KiB of header names kept"


SIZE_FIELDS = st.lists(st.tuples(st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding",
                                                  b"transfer-encoding", b"X-A"]),
                                 st.sampled_from([b"0", b"12", b"-1", b"1, 1", b"chunked", b"gzip, chunked",
                                                  b"chunked, gzip", b"identity", b"x", b" 5", b"007"])), max_size=4)
METHODS = st.sampled_from([b"GET", b"HEAD", b"head", b"CONNECT", b"POST"])
STATUSES = st.sampled_from([100, 101, 199, 200, 204, 299, 304, 400])


@given(SIZE_FIELDS, METHODS, st.none() | st.tuples(SIZE_FIELDS, STATUSES), METHODS, STATUSES, SIZE_FIELDS)
def test_a_kept_body_size_is_what_mitmproxy_answers_however_the_message_changes(
        request_fields, method, answer, method_after, status_after, fields_after) -> None:
    """Asked again after the request's method, the status or the fields changed (a new tuple), the kept answer is
    never the old one: each time it is what mitmproxy's own `expected_http_body_size` answers, or raises alike."""
    from mitmproxy.net.http import http1

    theirs = mitmtrim.REPLACED[(http1, "expected_http_body_size")]
    request = http.Request.make(method.decode(), "http://example.com/")
    request.headers.fields = tuple(request_fields)  # after `make`, which sets a Content-Length of its own
    response = None if answer is None else http.Response.make(answer[1])
    if response is not None and answer is not None:
        response.headers.fields = tuple(answer[0])
    for _ in range(2):
        assert outcome(lambda: http1.expected_http_body_size(request, response)) == \
            outcome(lambda: theirs(request, response))
    request.data.method = method_after
    assert outcome(lambda: http1.expected_http_body_size(request, response)) == outcome(lambda: theirs(request, response))
    message = response if response is not None else request
    if response is not None:
        response.status_code = status_after
        assert outcome(lambda: http1.expected_http_body_size(request, response)) == \
            outcome(lambda: theirs(request, response))
    message.headers.fields = tuple(fields_after)
    assert outcome(lambda: http1.expected_http_body_size(request, response)) == outcome(lambda: theirs(request, response))


def test_mitmproxys_layers_ask_the_kept_body_size() -> None:
    from mitmproxy.net.http import http1
    from mitmproxy.proxy.layers import http as http_layers

    assert http1.expected_http_body_size is mitmtrim._expected_body_size
    assert http_layers.expected_http_body_size is mitmtrim._expected_body_size


def test_a_body_size_is_not_kept_for_fields_that_change_in_place() -> None:
    """Fields set to a list, or holding a bytearray value, can change without a new object: each look-up reads them
    again (the red team's case: a stale Content-Length would frame the body otherwise than the upstream reads it)."""
    from mitmproxy.net.http import http1

    request = http.Request.make("POST", "http://example.com/")
    request.headers.fields = [(b"content-length", b"5")]  # type: ignore[assignment]
    assert http1.expected_http_body_size(request) == 5
    request.headers.fields[0] = (b"content-length", b"500")  # type: ignore[index]
    assert http1.expected_http_body_size(request) == 500
    value = bytearray(b"7")
    request.headers.fields = ((b"content-length", value),)  # type: ignore[assignment]
    assert http1.expected_http_body_size(request) == 7
    value[:] = b"700"
    assert http1.expected_http_body_size(request) == 700


# --- sends one after another to one connection, joined (`joined_sends`)

TCP_A = connection.Server(address=("192.0.2.1", 443))
TCP_B = connection.Client(peername=("127.0.0.1", 4242), sockname=("127.0.0.1", 8080), timestamp_start=0)
UDP = connection.Server(address=("192.0.2.1", 53), transport_protocol="udp")
LIMIT = mitmtrim.JOINED_SEND_BYTES


class Other(commands.Command):
    """A command that is not a send (a hook, a close, a log: all are given as they come)."""

    def __init__(self, n: int) -> None:
        self.n = n


sends = st.builds(lambda conn, size, fill: commands.SendData(conn, bytes([fill]) * size),
                  st.sampled_from([TCP_A, TCP_B, UDP]),
                  st.sampled_from([0, 1, 40, 200, LIMIT // 2, LIMIT - 1, LIMIT, LIMIT + 1]), st.integers(0, 255))
given_commands = st.lists(sends | st.builds(Other, st.integers(0, 9)), max_size=12)


def as_written(given: list[commands.Command]) -> list[tuple[Any, ...]]:
    """What the commands do: each run of sends to one TCP connection as the bytes it writes in order; every other
    command (and each datagram) as it is."""
    out: list[tuple[Any, ...]] = []
    for command in given:
        if type(command) is commands.SendData and command.connection.transport_protocol == "tcp":
            if out and out[-1][0] == "tcp" and out[-1][1] is command.connection:
                out[-1] = ("tcp", command.connection, out[-1][2] + command.data)
            else:
                out.append(("tcp", command.connection, command.data))
        elif type(command) is commands.SendData:
            out.append(("datagram", command.connection, command.data))
        else:
            out.append(("other", command))
    return [step for step in out if step[0] != "tcp" or step[2]]


@given(given_commands)
def test_joined_sends_write_the_same_bytes_in_the_same_order(given: list[commands.Command]) -> None:
    joined = list(mitmtrim.joined_sends(iter(given)))
    assert as_written(joined) == as_written(given)
    assert len(joined) <= len(given)
    for command in joined:
        if type(command) is commands.SendData and command not in given:  # made here: joined, never past the bound
            assert len(command.data) <= LIMIT and command.connection.transport_protocol == "tcp"
    datagrams = [c for c in joined if type(c) is commands.SendData and c.connection is UDP]
    assert datagrams == [c for c in given if type(c) is commands.SendData and c.connection is UDP]


def test_a_head_and_a_small_body_are_one_send_and_a_large_send_is_left_alone() -> None:
    head, body = commands.SendData(TCP_B, b"HTTP/1.1 200 OK\r\n\r\n"), commands.SendData(TCP_B, b"{}")
    (joined,) = mitmtrim.joined_sends([head, body])
    assert (joined.connection, joined.data) == (TCP_B, head.data + body.data)
    large = commands.SendData(TCP_B, b"x" * LIMIT)
    assert list(mitmtrim.joined_sends([head, large, body])) == [head, large, body]


def test_the_sends_before_a_layers_error_are_given_then_the_error() -> None:
    def layer() -> Any:
        yield commands.SendData(TCP_A, b"a")
        yield commands.SendData(TCP_A, b"b")
        raise RuntimeError("the layer crashed")

    joined = mitmtrim.joined_sends(layer())
    first = next(joined)
    assert (first.connection, first.data) == (TCP_A, b"ab")
    with pytest.raises(RuntimeError, match="the layer crashed"):
        next(joined)


def test_a_tunnels_child_is_given_its_sends_joined() -> None:
    assert tunnel.TunnelLayer.event_to_child is mitmtrim._event_to_child
    assert mitmtrim.REPLACED[(tunnel.TunnelLayer, "event_to_child")].__code__.co_names == mitmtrim._TUNNEL_NAMES[0]


class Child:
    """A tunnel's child layer that gives these commands for any event, then raises `error` if there is one."""

    def __init__(self, given: list[commands.Command], error: Exception | None = None) -> None:
        self.given, self.error = given, error

    def handle_event(self, _: Any) -> Any:
        yield from self.given
        if self.error is not None:
            raise self.error


def opened_tunnel(conn: connection.Connection, child: Child) -> tunnel.TunnelLayer:
    """mitmproxy's own tunnel layer (its `send_data` sends through to the tunnel's connection as it is), open."""
    from mitmproxy import options
    from mitmproxy.proxy import context

    ctx = context.Context(TCP_B, options.Options())
    layer = tunnel.TunnelLayer(ctx, tunnel_connection=conn, conn=conn)
    layer.tunnel_state = tunnel.TunnelState.OPEN
    layer.child_layer = child  # type: ignore[assignment]
    return layer


@given(given_commands, st.sampled_from([TCP_A, UDP]))
def test_a_tunnel_sends_its_childs_data_joined_in_the_same_order(given: list[commands.Command],
                                                                 conn: connection.Connection) -> None:
    from mitmproxy.proxy import events

    given = [c for c in given if not isinstance(c, commands.SendData) or c.connection in (conn, TCP_B)]
    sent = list(opened_tunnel(conn, Child(given)).event_to_child(events.Start()))
    assert as_written(sent) == as_written(given)
    if conn is UDP:  # each datagram as the child gave it
        assert [c.data for c in sent if isinstance(c, commands.SendData) and c.connection is UDP] == \
            [c.data for c in given if isinstance(c, commands.SendData) and c.connection is UDP]


def test_a_tunnel_sends_what_its_child_gave_before_it_raised() -> None:
    from mitmproxy.proxy import events

    child = Child([commands.SendData(TCP_A, b"head"), commands.SendData(TCP_A, b"body")], RuntimeError("crashed"))
    sending = opened_tunnel(TCP_A, child).event_to_child(events.Start())
    first = next(sending)
    assert (first.connection, first.data) == (TCP_A, b"headbody")
    with pytest.raises(RuntimeError, match="crashed"):
        next(sending)
