"""mitmproxy's per-request paths that cost more than they need to, made cheaper for the proxies goex-proxy builds,
with the same results: each call here was measured in a running proxy."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from mitmproxy import hooks, http, optmanager
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer, tunnel
from mitmproxy.proxy.layers import http as http_layers


def _unchecked(_: object) -> None:
    """What a request's or response's fields get checked with: nothing (see `trim`)."""


#: Header names as looked up, lowered as bytes: the few names mitmproxy and the stages ask for, by type (text and
#: bytes apart: "host" and b"host" hash alike, and comparing them warns under `python -b`). Only names as short as
#: those are kept: a look-up can be by a name an agent sent (`headers.items()` reads each field by its name), up to
#: `limits.max_header_bytes` long, and 4096 of those would be kept for good.
_KEYS: dict[type, dict[Any, bytes]] = {str: {}, bytes: {}}
_MOST_KEYS = 4096
_LONGEST_KEY = 64


def _key(name: str | bytes) -> bytes:
    known = _KEYS.get(type(name))
    key = known.get(name) if known is not None else None
    if key is None:
        key = http._always_bytes(name).lower()  # mitmproxy's own: what is neither text nor bytes is refused alike
        if known is not None and len(name) <= _LONGEST_KEY and len(known) < _MOST_KEYS:
            known[name] = key
    return key


def _values_by_name(headers: http.Headers) -> dict[bytes, list[bytes]] | None:
    """The raw values of `headers` by lowered name, made once for each `fields` it holds (mitmproxy replaces that
    tuple at every change); None for fields that could change in place or whose names are not bytes."""
    fields = headers.fields
    held = headers.__dict__.get("_goex_by_name")
    if held is not None and held[0] is fields:
        return held[1]  # type: ignore[no-any-return]
    if type(fields) is not tuple:
        return None
    by_name: dict[bytes, list[bytes]] = {}
    for pair in fields:
        if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not bytes:
            return None
        by_name.setdefault(pair[0].lower(), []).append(pair[1])
    headers.__dict__["_goex_by_name"] = (fields, by_name)
    return by_name


def _header_values(headers: http.Headers, name: str | bytes) -> list[str]:
    """`Headers.get_all` through an index of the fields by name: the values of every field of this name (any case),
    decoded as mitmproxy decodes them. mitmproxy's goes through its base class and a static method per field."""
    key = _key(name)
    by_name = _values_by_name(headers)
    if by_name is not None:
        values = by_name.get(key, ())
    else:  # every field's name before any value, as mitmproxy does: for `fields` set to anything, the same exception
        values = [value for field, value in headers.fields if field.lower() == key]
    return [value.decode("utf-8", "surrogateescape") for value in values]


def _header(headers: http.Headers, key: str | bytes, default: Any = None) -> Any:
    """`Headers.get`: the values of this name joined with ", ", else `default`; without raising and catching the
    KeyError of a missing one, as `Mapping.get` does (whose parameters, `key` and `default`, these are: by name too).
    A name looked up before, in fields already indexed, is answered from the index at once (most of a GET's 24)."""
    held = headers.__dict__.get("_goex_by_name")
    known = _KEYS.get(type(key))
    if held is not None and known is not None and held[0] is headers.fields and (lowered := known.get(key)) is not None:
        raw = held[1].get(lowered)
        if raw is None:
            return default
        if len(raw) == 1:
            return raw[0].decode("utf-8", "surrogateescape")
        return ", ".join([value.decode("utf-8", "surrogateescape") for value in raw])
    values = _header_values(headers, key)
    return ", ".join(values) if values else default


def _has_header(headers: http.Headers, key: object) -> bool:
    """`key in headers`: whether a field has this name (any case); `key` as `Mapping.__contains__` names it."""
    return bool(_header_values(headers, key))  # type: ignore[arg-type]  # mitmproxy's raises alike for a non-name


#: mitmproxy's `expected_http_body_size`, as it was before `trim`.
_body_size_of = http1.expected_http_body_size


def _expected_body_size(request: http.Request, response: http.Response | None = None) -> int | None:
    """`expected_http_body_size`, its answer kept on the message whose size it is while what it read is the same
    (the fields, the request's method, the status): mitmproxy asks four times of a response and twice of a request.
    Kept only for fields that cannot change in place (a tuple of tuples with bytes values, as mitmproxy makes them)."""
    message = response if response is not None else request
    method = request.data.method
    status = response.data.status_code if response is not None else None
    fields = message.headers.fields
    kept = message.__dict__.get("_goex_body_size")
    if kept is not None and kept[0] is fields and kept[1] == method and kept[2] == status:
        return kept[3]  # type: ignore[no-any-return]
    size = _body_size_of(request, response)
    if type(fields) is tuple and all(type(pair) is tuple and type(pair[-1]) is bytes for pair in fields):
        message.__dict__["_goex_body_size"] = (fields, method, status, size)  # fields nothing changes in place
    return size


#: The types whose values `copy.deepcopy` gives back as they are (its "atomic" ones that options hold).
_ATOMIC = frozenset({str, bytes, int, float, bool, type(None)})


def _option_value(option: optmanager._Option) -> Any:
    """An option's value as mitmproxy's `_Option.current` gives it: a deep copy (its default's, when unset), made
    only where a copy is another object."""
    value = option._default if option.value is optmanager.unset else option.value
    return value if type(value) in _ATOMIC else copy.deepcopy(value)


#: Each hook class's field names, in order (a dataclass's fields do not change).
_HOOK_FIELDS: dict[type, tuple[str, ...]] = {}


def _hook_args(hook: hooks.Hook) -> list[Any]:
    """`Hook.args`: the hook's fields' values, in order; the names read once a class."""
    names = _HOOK_FIELDS.get(type(hook))
    if names is None:
        names = _HOOK_FIELDS[type(hook)] = tuple(field.name for field in dataclasses.fields(hook))  # type: ignore[arg-type]
    return [getattr(hook, name) for name in names]


#: Sends one after another to one connection are joined up to this many bytes together: a response's head and a small
#: body were two system calls (and over TLS two records), each waking the peer; a larger send is worth its own call,
#: and joining it would copy it.
JOINED_SEND_BYTES = 16 * 1024


def joined_sends(given: Iterable[commands.Command]) -> Generator[commands.Command, Any, None]:
    """`given`, each run of sends one after another to the same TCP connection given as one send of their bytes (up to
    JOINED_SEND_BYTES): the same bytes in the same order, in fewer writes. A send is given once the next command is
    known (or there is none); when the layer raises, the sends it gave before are given, then its error."""
    held: commands.SendData | None = None
    parts: list[bytes] = []
    size = 0
    try:
        for command in given:
            if held is not None:
                if (type(command) is commands.SendData and command.connection is held.connection
                        and size + len(command.data) <= JOINED_SEND_BYTES):
                    parts.append(command.data)
                    size += len(command.data)
                    continue
                send, held = _joined(held, parts), None
                yield send
            if (type(command) is commands.SendData and len(command.data) <= JOINED_SEND_BYTES
                    and command.connection.transport_protocol == "tcp"):  # a datagram's bounds are its meaning
                held, parts, size = command, [command.data], len(command.data)
            else:
                yield command
    except BaseException:  # the layer raised (held is None at each yield: nothing is held when one is closed)
        if held is not None:
            yield _joined(held, parts)
        raise
    if held is not None:
        yield _joined(held, parts)


def _joined(first: commands.SendData, parts: list[bytes]) -> commands.SendData:
    return first if len(parts) == 1 else commands.SendData(first.connection, b"".join(parts))


def _event_to_child(self: tunnel.TunnelLayer, event: events.Event) -> layer.CommandGenerator[None]:
    """`TunnelLayer.event_to_child`, the child's sends to this tunnel's connection one after another sent as one (up
    to JOINED_SEND_BYTES): over TLS, one record and one write where a response's head and body were two. Joined here
    as `joined_sends` joins them, without a generator of its own (a GET passes 31 events through its tunnels)."""
    if self.tunnel_state is tunnel.TunnelState.ESTABLISHING and not self.command_to_reply_to:
        self._event_queue.append(event)
        return
    joins = self.conn if self.conn.transport_protocol == "tcp" else None
    held = b""
    try:
        for command in self.child_layer.handle_event(event):
            if (type(command) is commands.SendData and command.connection is joins
                    and len(held) + len(command.data) <= JOINED_SEND_BYTES):
                held += command.data
                continue
            if held:
                data, held = held, b""
                yield from self.send_data(data)
            yield from self._handle_command(command)
    except BaseException:  # the child raised (held is empty at each yield: nothing is held when one is closed)
        if held:
            data, held = held, b""
            yield from self.send_data(data)
        raise
    if held:
        yield from self.send_data(held)


#: The names mitmproxy's `TunnelLayer.event_to_child` and `_handle_command` read, as measured: `_event_to_child` does
#: what the one does, and sends its joined data as the other sends data to the tunnel's connection.
_TUNNEL_NAMES = (
    ("tunnel_state", "TunnelState", "ESTABLISHING", "command_to_reply_to", "_event_queue", "append", "child_layer",
     "handle_event", "_handle_command"),
    ("isinstance", "commands", "ConnectionCommand", "connection", "conn", "SendData", "send_data", "data",
     "CloseConnection", "tunnel_connection", "state", "ConnectionState", "CAN_WRITE", "send_close", "OpenConnection",
     "command_to_reply_to", "TunnelState", "ESTABLISHING", "tunnel_state", "event_to_child", "events",
     "OpenConnectionCompleted", "CLOSED", "start_handshake", "AssertionError"))


#: What `trim` replaced, by class (or module) and name, as it was (the tests hold the replacements to it).
REPLACED: dict[tuple[Any, str], Any] = {}


def _replace(owner: Any, name: str, by: Any) -> None:
    REPLACED.setdefault((owner, name), getattr(owner, name, None))
    setattr(owner, name, by)


def trim() -> None:
    """Make this process's mitmproxy cheaper where `run` measured it (each in place for good: the same results):

    - no type check of every field of every request and response it builds (`MessageData.__post_init__`, run only
      when Python runs without `-O`): about 20 µs each, 41 µs of a GET's CPU, finding that mitmproxy's own parser gave
      bytes where it gives bytes (mitmproxy skips it under `python -O`, which would drop goex-proxy's asserts too);
    - header look-ups (`Headers.get`, `get_all`, `in`) through an index of the fields by name, made once for each
      version of the fields: mitmproxy makes about 32 a GET, 12 of them to find a body's size, each ~3.5 µs through
      its generic multidict and `Mapping.get`'s KeyError, lowering every field's name each time; only while they
      are the ones measured (a mitmproxy with look-ups of its own keeps them);
    - an option's value read without a deep copy of a string, number or None (mitmproxy's layers read about ten
      options a GET, each copied twice when unset, through `copy.deepcopy`, which gives such values back as they are);
    - a hook's arguments read by field names kept for its class (`dataclasses.fields` each time: eight a GET);
    - a message's expected body size kept on it while its fields, its request's method and its status are the same
      (`expected_http_body_size`: asked six times a GET, each 2-5 µs);
    - the sends a tunnel's child (TLS) gives one after another encrypted as one (`_event_to_child`, as `joined_sends`
      joins them at the top of a connection): a response's head and body were two records and two writes."""
    _replace(http.MessageData, "__post_init__", _unchecked)
    if (http.Headers.get_all.__qualname__, http.Headers.get, http.Headers.__contains__) == (
            "Headers.get_all", Mapping.get, Mapping.__contains__):  # mitmproxy's as measured (not yet replaced)
        _replace(http.Headers, "get_all", _header_values)
        _replace(http.Headers, "get", _header)
        _replace(http.Headers, "__contains__", _has_header)
    if optmanager._Option.current.__qualname__ == "_Option.current":  # mitmproxy's as measured (not yet replaced)
        _replace(optmanager._Option, "current", _option_value)
    if hooks.Hook.args.__qualname__ == "Hook.args":
        _replace(hooks.Hook, "args", _hook_args)
    if (tunnel.TunnelLayer.event_to_child.__code__.co_names,
            tunnel.TunnelLayer._handle_command.__code__.co_names) == _TUNNEL_NAMES:
        _replace(tunnel.TunnelLayer, "event_to_child", _event_to_child)
    if http1.expected_http_body_size is _body_size_of is getattr(http_layers, "expected_http_body_size", None):
        _replace(http1, "expected_http_body_size", _expected_body_size)
        _replace(http_layers, "expected_http_body_size", _expected_body_size)
