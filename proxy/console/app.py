"""The console's Starlette app: the log and its live stream, a request's page and undo, the approvals page."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..approvals import store as approvals
from ..audit import store as audit
from ..config import Config
from ..durations import moment
from ..errors import AuditError, GoexError, NotFound
from ..undo import session
from ..undo.plan import FIDELITIES, SAFE_METHODS
from ..undo.run import Journal
from . import data, executions, policies, undoing
from .auth import Keys
from .render import body_view, environment, headers_of

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ASSETS = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
DECISIONS = ("allow", "deny", "report", "hold", "delay")
#: How often the live stream looks for new rows, and how often it says it is still there.
POLL_S = 0.5
KEEPALIVE_S = 15.0
BY = "console"
FORM_LIMIT = 64 * 1024
REFUSED = ("This form is stale or did not come from the console; nothing was done. Reload the page and try "
           "again.")


class Form(dict[str, list[str]]):
    """A URL-encoded form's fields (the console's forms have no files)."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        values = super().get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(super().get(name) or [])


class BadInput(ValueError):
    """A filter or form value the console cannot use (400, said on the page)."""


def _since(text: str, name: str = "since") -> float | None:
    """A `since` or `until` filter: a duration back from now (1h, 30m) or an ISO time, local unless it names a zone."""
    if not text:
        return None
    try:
        return moment(text, time.time())
    except ValueError as exc:
        raise BadInput(f"'{name}' {exc}") from None


def _filters(request: Request) -> data.Filters:
    q = request.query_params
    decision = q.get("decision") or None
    undo_class = q.get("undo_class") or None
    if decision is not None and decision not in DECISIONS:
        raise BadInput(f"unknown decision {decision!r}")
    if undo_class is not None and undo_class not in FIDELITIES:
        raise BadInput(f"unknown undo class {undo_class!r}")
    return data.Filters(agent=q.get("agent") or None, host=(q.get("host") or "").lower() or None, decision=decision,
                        undo_class=undo_class, since=_since(q.get("since", "").strip()),
                        until=_since(q.get("until", "").strip(), "until"))


def _at(value: str | None) -> float | None:
    """The time of the row a page goes on after (`at`), as the page before gave it (a prune may have taken the row)."""
    if not value:
        return None
    try:
        found = float(value)
    except ValueError:
        raise BadInput("'at' must be a time in seconds") from None
    if not math.isfinite(found):
        raise BadInput("'at' must be a time in seconds")
    return found


def _seq(value: str | None, name: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise BadInput(f"'{name}' must be a row number")
    return int(value)


class Console:
    """The console over one state directory: its templates, its database connection and this start's keys."""

    def __init__(self, config: Config, keys: Keys) -> None:
        self.config, self.keys = config, keys
        self.db = data.Db(config)
        self.env = environment()
        self.closing = asyncio.Event()

    async def read(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self.db.run, work)

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        session = str(request.state.session)
        text = self.env.get_template(template).render(csrf=self.keys.csrf(session), **values)
        return HTMLResponse(text, status)

    def message(self, request: Request, status: int, title: str, message: str, back: str | None = None) -> Response:
        return self.page(request, "message.html", status, title=title, message=message, back=back, nav="",
                         kind="bad" if status >= 400 else "ok")

    async def checked_form(self, request: Request) -> Form | None:
        """The POSTed form (URL-encoded, at most FORM_LIMIT bytes), once its CSRF token is this session's; None if
        it is not (the caller answers 403)."""
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                raise BadInput("the form is too large")
        form = Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)) \
            if kind == "application/x-www-form-urlencoded" else Form({})
        given = form.get("csrf")
        if given is None or not self.keys.csrf_ok(str(request.state.session), given):
            return None
        return form

    # Pages ------------------------------------------------------------------------------------------------------

    async def log_page(self, request: Request) -> Response:
        filters = _filters(request)
        before = _seq(request.query_params.get("before"), "before")
        at = _at(request.query_params.get("at")) if before is not None else None
        rows, top = await self.read(functools.partial(data.listing, filters=filters, before=before, at=at))
        kept = {k: v for k, v in request.query_params.items() if k in ("agent", "host", "decision", "undo_class",
                                                                        "since", "until") and v}
        older = None
        if len(rows) == data.PAGE:
            last = rows[-1]
            at_last = {"at": repr(float(last["ts"]))} if isinstance(last["ts"], (int, float)) else {}  # edited: none
            older = f"/?{urlencode({**kept, 'before': last['seq'], **at_last})}"
        stream = f"/events?{urlencode({**kept, 'after': top})}"
        return self.page(request, "log.html", title="Requests", nav="log", rows=rows, f=filters, older=older,
                         before=before, stream=stream, since=kept.get("since", ""), until=kept.get("until", ""), decisions=DECISIONS,
                         classes=FIDELITIES, filtered=bool(kept))

    async def events(self, request: Request) -> Response:
        """Server-sent events: each new row matching the filters, as the log page's HTML for it."""
        filters = _filters(request)
        after = _seq(request.headers.get("last-event-id") or request.query_params.get("after"), "after")
        if after is None:
            after = await self.read(data.head)
        row_template = self.env.get_template("_row.html")

        async def stream() -> AsyncIterator[str]:
            last, quiet = int(after or 0), 0.0
            yield "retry: 2000\n\n"
            while not self.closing.is_set() and not await request.is_disconnected():
                rows, read_to = await self.read(functools.partial(data.newer, filters=filters, after=last))
                for r in rows:
                    seq = int(r["seq"])
                    html = row_template.render(r=r).replace("\n", "")
                    yield f"event: row\nid: {seq}\ndata: {json.dumps({'seq': seq, 'html': html})}\n\n"
                last = read_to
                quiet = 0.0 if rows else quiet + POLL_S
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": still here\n\n"
                if len(rows) >= data.NEWER_ROWS:
                    continue  # more are waiting: a busy proxy must not leave the stream behind
                try:
                    await asyncio.wait_for(self.closing.wait(), POLL_S)
                except TimeoutError:
                    pass

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def detail(self, request: Request) -> Response:
        request_id = str(request.path_params["request_id"]).upper()

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            try:
                row = audit.get(conn, request_id)
            except AuditError as exc:  # damaged: shown as far as it reads, its chain broken, and nothing to undo
                row = audit.get(conn, request_id, lenient=True)
                ok, chain = data.chain_status(conn, self.db.seal, row)
                return {"row": row, "chain_ok": False, "chain": chain if not ok else str(exc), "shown": None,
                        "no_plan": f"No undo plan: {exc}", "statement": None}
            ok, chain = data.chain_status(conn, self.db.seal, row)
            if not ok:  # edited: nothing of it is planned on (undo refuses it), and its values may be any shape
                return {"row": row, "chain_ok": False, "chain": chain, "shown": None, "statement": None,
                        "no_plan": f"No undo plan: its audit row does not hold ({chain})"}
            if undoing.is_statement(row):
                return {"row": row, "chain_ok": ok, "chain": chain, "shown": None, "no_plan": "",
                        "statement": undoing.show_statement(self.config, conn, row)}
            try:
                shown: undoing.Shown | None = undoing.show(self.config, conn, row)
                no_plan = ""
            except GoexError as exc:
                shown, no_plan = None, f"No undo plan: {exc}"
            return {"row": row, "chain_ok": ok, "chain": chain, "shown": shown, "no_plan": no_plan, "statement": None}

        try:
            found = await self.read(work)
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), "/")
        row, shown = found["row"], found["shown"]
        req_headers, resp_headers = headers_of(row["req_headers"]), headers_of(row["resp_headers"])
        return self.page(request, "detail.html", title=f"Request {row['id']}", nav="log", row=row,
                         approval=data.approval_of(row), chain_ok=found["chain_ok"], chain=found["chain"],
                         req_headers=req_headers, resp_headers=resp_headers,
                         req_body=body_view(row["req_body"], row["req_body_size"], req_headers),
                         resp_body=body_view(row["resp_body"], row["resp_body_size"], resp_headers),
                         plan=shown.planned if shown else None, forceable=bool(shown and shown.forceable),
                         statement=found["statement"],
                         no_plan=found["no_plan"] or "No undo plan.")

    async def undo(self, request: Request) -> Response:
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", "This form is stale or did not come from the console; "
                                                         "nothing was done. Reload the page and try again.")
        request_id = str(request.path_params["request_id"]).upper()
        force = form.get("force") == "1"
        try:
            done = await asyncio.to_thread(undoing.carry_out, self.config, request_id, force)
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), "/")
        except GoexError as exc:
            return self.message(request, 409, "Not undone", str(exc), f"/request/{request_id}")
        log.info("console: undo of %s%s: %s", request_id, " (forced)" if force else "", done.state)
        status = {"done": 200, "refused": 409, "conflict": 409}.get(done.state, 502)
        return self.page(request, "undone.html", status, title=f"Undo of {request_id}: {done.state}", nav="log",
                         state=done.state, message=done.message, steps=done.steps, request_id=request_id,
                         forceable=done.forceable)

    async def approvals_page(self, request: Request) -> Response:
        def work(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return approvals.pending(conn), approvals.review_queue(conn)

        waiting, review = await self.read(work)
        now = time.time()
        for entry in [*waiting, *review]:
            try:
                card = json.loads(entry.get("card") or "{}")
            except ValueError:
                card = {}
            entry["card"] = card if isinstance(card, dict) else {}
            entry["left"] = max(0, round(float(entry.get("deadline") or 0) - now))
        return self.page(request, "approvals.html", title="Approvals", nav="approvals", waiting=waiting,
                         review=review, refresh=5)

    async def decide(self, request: Request) -> Response:
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", "This form is stale or did not come from the console; "
                                                         "nothing was decided. Reload the page and try again.")
        request_id, action = str(request.path_params["request_id"]).upper(), str(request.path_params["action"])
        if action not in approvals.ACTIONS:
            return self.message(request, 404, "Not found", f"no action {action!r}", "/approvals")
        reason = str(form.get("reason") or "").strip()[:500] or None
        try:
            settled = await self.read(lambda c: approvals.decide(c, request_id, action, BY, reason))
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), "/approvals")
        except approvals.ApprovalError as exc:
            return self.message(request, 409, "Nothing to decide", f"{exc}.", "/approvals")
        log.info("console: %s %s", settled.state, request_id)
        return RedirectResponse("/approvals", 303)

    async def mark_seen(self, request: Request) -> Response:
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", "This form is stale or did not come from the console; "
                                                         "nothing was marked. Reload the page and try again.")
        ids = [str(v).upper() for v in form.getlist("id")]
        await self.read(lambda c: approvals.mark_seen(c, ids, BY))
        return RedirectResponse("/approvals", 303)

    # Runs of execute ---------------------------------------------------------------------------------------------

    async def runs_page(self, request: Request) -> Response:
        found = await self.read(executions.listed)
        return self.page(request, "runs.html", title="Runs of execute", nav="runs", runs=found)

    async def run_page(self, request: Request) -> Response:
        run_id = int(request.path_params["run_id"])

        def work(conn: sqlite3.Connection) -> tuple[executions.ExecRun, float | None, list[dict[str, Any]], int]:
            run, until = executions.one(conn, run_id)
            rows = executions.requests(conn, run)
            changing = [r for r in rows if r["decision"] in ("allow", "report") and r["method"] not in SAFE_METHODS]
            planned = session.plan_rows(self.config, Journal(conn), changing, False)
            return run, until, rows, sum(1 for p in planned if p.passed_over is None)

        try:
            run, until, rows, undoable = await self.read(work)
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), "/runs")
        files = await asyncio.to_thread(executions.file_runs_of, self.config, run, until)
        live = [f for f in files if f.state in ("pending", "kept")]
        return self.page(request, "run.html", title=f"Run {run.id} of execute", nav="runs", run=run, rows=rows,
                         files=files, undoable=undoable, live_files=bool(live))

    async def run_undo(self, request: Request) -> Response:
        """Undo a whole run: its requests through the undo engine (as `execute`'s "undo all"), then its files."""
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", REFUSED)
        run_id, force = int(request.path_params["run_id"]), form.get("force") == "1"
        back = f"/runs/{run_id}"

        def work() -> tuple[executions.Undone, list[tuple[bool, str]], bool]:
            conn = audit.connect(self.config)
            try:
                run, until = executions.one(conn, run_id)
                rows = [r for r in executions.requests(conn, run)
                        if r["decision"] in ("allow", "report") and r["method"] not in SAFE_METHODS]
            finally:
                conn.close()
            undone = executions.undo_requests(self.config, rows, force)
            said: list[tuple[bool, str]] = [(state == "done", f"{rid}: {message}")
                                            for rid, state, message in undone.ended]
            said += [(False, f"not undone: {rid}: {why}") for rid, why in undone.skipped
                     if why != session.ALREADY_UNDONE]
            conflict = any(state == "conflict" for _, state, _ in undone.ended)
            if all(state == "done" for _, state, _ in undone.ended):
                for f in executions.file_runs_of(self.config, run, until):
                    if f.state not in ("pending", "kept"):
                        continue
                    try:
                        said.append((True, executions.decide_files(self.config, f.id, "undo", force)))
                    except GoexError as exc:
                        said.append((False, str(exc)))
                        conflict = conflict or "changed since the run" in str(exc)
            return undone, said, conflict

        try:
            undone, said, conflict = await asyncio.to_thread(work)
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), "/runs")
        if not said:
            said = [(True, "nothing was left to undo")]
        log.info("console: undo of execute run %s%s", run_id, " (forced)" if force else "")
        ok = all(good for good, _ in said)
        return self.page(request, "run_done.html", 200 if ok else 409, title=f"Undo of run {run_id}", nav="runs",
                         said=said, steps=undone.steps, back=back,
                         forceable=f"/runs/{run_id}/undo" if conflict and not force else None)

    async def run_files(self, request: Request) -> Response:
        """Keep or undo one file run of a run, as `goex-proxy files keep/undo` does."""
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", REFUSED)
        run_id, file_run = int(request.path_params["run_id"]), str(request.path_params["file_run"])
        action, force = str(request.path_params["action"]), form.get("force") == "1"
        back = f"/runs/{run_id}"
        if action not in ("keep", "undo"):
            return self.message(request, 404, "Not found", f"no action {action!r}", back)
        try:
            said = await asyncio.to_thread(executions.decide_files, self.config, file_run, action, force)
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), back)
        except GoexError as exc:
            conflict = "changed since the run" in str(exc) and not force
            return self.page(request, "run_done.html", 409, title=f"Not done: {action} of {file_run}", nav="runs",
                             said=[(False, str(exc))], steps=[], back=back,
                             forceable=f"/runs/{run_id}/files/{file_run}/{action}" if conflict else None)
        log.info("console: %s of file run %s%s", action, file_run, " (forced)" if force else "")
        return self.page(request, "run_done.html", title=f"{action.capitalize()} of {file_run}", nav="runs",
                         said=[(True, said)], steps=[], back=back, forceable=None)

    # Policies ----------------------------------------------------------------------------------------------------

    async def policies_page(self, request: Request) -> Response:
        found = await asyncio.to_thread(policies.overview, self.config)
        return self.page(request, "policies.html", title="Policies", nav="policies", o=found, w=None, draft="")

    async def what_if(self, request: Request) -> Response:
        """A draft policy replayed against the log (POST for its size and the CSRF check; nothing is saved)."""
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", REFUSED)
        draft = str(form.get("draft") or "")
        found, result = await asyncio.gather(asyncio.to_thread(policies.overview, self.config),
                                             asyncio.to_thread(policies.what_if, self.config, draft))
        return self.page(request, "policies.html", title="Policies", nav="policies", o=found, w=result, draft=draft)

    # Whole-session undo ------------------------------------------------------------------------------------------

    async def session_page(self, request: Request) -> Response:
        q = request.query_params
        agent, since_text, until_text = (q.get("agent") or "").strip(), (q.get("since") or "").strip(), \
            (q.get("until") or "").strip()
        found = None
        if agent and since_text:
            since, until = _since(since_text), _since(until_text, "until")
            assert since is not None
            found = await asyncio.to_thread(undoing.plan_session, self.config, agent, since, until)
        elif agent or since_text:
            raise BadInput("a session is an agent and a 'since' (1h, or an ISO time)")
        return self.page(request, "session.html", title="Undo a session", nav="session", agent=agent,
                         since=since_text, until=until_text, p=found)

    async def session_undo(self, request: Request) -> Response:
        form = await self.checked_form(request)
        if form is None:
            return self.message(request, 403, "Refused", REFUSED)
        agent, force = str(form.get("agent") or ""), form.get("force") == "1"
        ids = [str(v).upper() for v in form.getlist("id")]
        run_ids = [str(v) for v in form.getlist("run")]
        if not agent or not (ids or run_ids):
            raise BadInput("nothing was confirmed to undo")
        try:
            done = await asyncio.to_thread(undoing.carry_out_session, self.config, agent, ids, run_ids, force)
        except NotFound as exc:
            return self.message(request, 404, "Not found", str(exc), "/session")
        except GoexError as exc:
            return self.message(request, 409, "Not undone", str(exc), "/session")
        log.info("console: session undo of %s: %d request(s), %d file run(s)%s", agent, len(ids), len(run_ids),
                 " (forced)" if force else "")
        ok = all(s == "done" for _, s, _ in done.ended) and all(good for _, good, _ in done.files) and not done.left
        return self.page(request, "session_done.html", 200 if ok else 409, title=f"Undo of {agent}'s session",
                         nav="session", d=done, agent=agent, ids=ids, run_ids=run_ids, forced=force)

    async def asset(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in ASSETS:
            return Response("not found\n", 404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=ASSETS[name])


def _safe(console: Console, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A handler whose bad input is a 400 page, an unreadable database a 503, and a bug a 500 with one log line."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except BadInput as exc:
            return console.message(request, 400, "Not understood", str(exc), "/")
        except (GoexError, sqlite3.Error) as exc:
            log.error("console: could not read the audit database: %s", exc)
            return console.message(request, 503, "Try again", "The audit database could not be read just now.")
        except Exception as exc:  # a bug: one line in the log, a plain page, never a traceback to the browser
            log.error("console: %s: %s", type(exc).__name__, exc)
            return console.message(request, 500, "Something went wrong", "The console could not answer; its log "
                                                                         "says why.")

    return answer


def build(console: Console) -> Starlette:
    c = console
    routes = [
        Route("/", _safe(c, c.log_page)),
        Route("/events", _safe(c, c.events)),
        Route("/request/{request_id}", _safe(c, c.detail)),
        Route("/request/{request_id}/undo", _safe(c, c.undo), methods=["POST"]),
        Route("/approvals", _safe(c, c.approvals_page)),
        Route("/approvals/{request_id}/{action}", _safe(c, c.decide), methods=["POST"]),
        Route("/review/seen", _safe(c, c.mark_seen), methods=["POST"]),
        Route("/runs", _safe(c, c.runs_page)),
        Route("/runs/{run_id:int}", _safe(c, c.run_page)),
        Route("/runs/{run_id:int}/undo", _safe(c, c.run_undo), methods=["POST"]),
        Route("/runs/{run_id:int}/files/{file_run}/{action}", _safe(c, c.run_files), methods=["POST"]),
        Route("/policies", _safe(c, c.policies_page)),
        Route("/policies/whatif", _safe(c, c.what_if), methods=["POST"]),
        Route("/session", _safe(c, c.session_page)),
        Route("/session/undo", _safe(c, c.session_undo), methods=["POST"]),
        Route("/static/{name}", c.asset),
    ]
    return Starlette(routes=routes)
