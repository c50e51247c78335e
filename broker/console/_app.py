"""The console's ASGI app: pages, the live event stream, the action POSTs.

Everything it shows or does goes through one :class:`~broker.client.BusClient` signed with the
agency's own key: the console is a client of the bus like the CLI, and adds no way in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from broker.client import BusClient, error_details, minor_units, open_accounts
from broker.protocol import ProtocolError, load_agency_encryption_key, load_agency_signing_key, state_name

from . import _actions, _csrf
from ._config import ConsoleConfig
from ._errors import ConsoleError
from ._live import event_stream
from ._views import case_requests, is_open, request_row, sla_view, trail_graph

__all__ = ["create_app"]

log = structlog.get_logger(__name__)

_HERE = Path(__file__).parent
_S = common_pb2
# Requests that may still need the officer: not answered yet, or holding money.
_OPEN_STATES = [
    _S.REQUEST_STATE_SUBMITTED,
    _S.REQUEST_STATE_DELIVERED,
    _S.REQUEST_STATE_ACKNOWLEDGED,
    _S.REQUEST_STATE_EXECUTED,
    _S.REQUEST_STATE_PARTIALLY_EXECUTED,
    _S.REQUEST_STATE_EXTENDED,
]
_ACTIONS = ("extend", "release", "cancel", "convert")


@dataclass(frozen=True, kw_only=True)
class _Console:
    config: ConsoleConfig
    bus: BusClient
    encryption_key: x25519.X25519PrivateKey | None
    kind: str
    """The agency's kind: ``police`` see what they sent, the others what they received."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def row(self, status: lifecycle_pb2.RequestStatus) -> dict[str, Any]:
        row = request_row(
            status, now=self.now(), warn_phase=self.config.warn_phase, warn_hold=self.config.warn_hold
        )
        mine = status.sender == self.config.agency_id
        row["can_cancel"] = row["can_cancel"] and mine
        row["can_hold_actions"] = row["can_hold_actions"] and mine
        row["can_convert"] = row["can_convert"] and mine
        return row

    def concerns(self, status: lifecycle_pb2.RequestStatus) -> bool:
        me = self.config.agency_id
        if self.kind == "police":
            return me in (status.sender, status.case_ref.issuing_agency)
        if self.kind == "regulator":
            return True
        return status.recipient == me

    async def open_rows(self) -> list[dict[str, Any]]:
        # Banks, carriers and platforms see what they received: the broker filters, not the page.
        role = bus_pb2.ROLE_UNSPECIFIED if self.kind in ("police", "regulator") else bus_pb2.ROLE_RECIPIENT
        statuses = await self.bus.list_all(states=_OPEN_STATES, role=role)
        now = self.now()
        # The broker lists newest first; keep its order.
        return [self.row(s) for s in statuses if self.concerns(s) and is_open(s, now=now)]

    async def one_row(self, request_id: str) -> dict[str, Any] | None:
        try:
            status = await self.bus.get(request_id)
        except grpc.aio.AioRpcError:
            return None
        return self.row(status) if self.concerns(status) else None


def _kind_name(kind: int) -> str:
    return _S.AgencyKind.Name(kind).removeprefix("AGENCY_KIND_").lower()  # type: ignore[arg-type]


class _Pages:
    """The routes' handlers; the running console is on ``request.app.state.console``."""

    def __init__(self) -> None:
        self.templates = Jinja2Templates(directory=_HERE / "templates")

    @staticmethod
    def console(request: Request) -> _Console:
        console: _Console = request.app.state.console
        return console

    def page(self, request: Request, name: str, **context: Any) -> Response:
        console = self.console(request)
        response = self.templates.TemplateResponse(
            request,
            name,
            {
                "agency": console.config.agency_id,
                "kind": console.kind,
                "csrf": _csrf.token_of(request),
                "notice": request.query_params.get("notice", ""),
                "problem": request.query_params.get("problem", ""),
                **context,
            },
        )
        _csrf.ensure_cookie(request, response)
        return response

    async def now(self, request: Request) -> Response:
        console = self.console(request)
        rows = await console.open_rows()
        heading = "received" if console.kind not in ("police", "regulator") else "sent and owned"
        return self.page(request, "now.html", rows=rows, heading=heading, active="now")

    async def events(self, request: Request) -> Response:
        console = self.console(request)
        row_template = self.templates.get_template("_row.html")
        context = {"kind": console.kind, "csrf": _csrf.token_of(request)}

        def rendered(row: dict[str, Any]) -> dict[str, Any]:
            # Rows arrive as the page's own template renders them: one row markup, no JS copy.
            return {**row, "html": row_template.render(r=row, **context)}

        async def rows() -> list[dict[str, Any]]:
            return [rendered(row) for row in await console.open_rows()]

        async def row(request_id: str) -> dict[str, Any] | None:
            one = await console.one_row(request_id)
            return None if one is None else rendered(one)

        stream = event_stream(console.bus, rows=rows, row=row, refresh=console.config.refresh)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def case(self, request: Request) -> Response:
        console = self.console(request)
        case = request.path_params["case"]
        statuses = sorted(
            await console.bus.list_all(case_number=case), key=lambda s: s.submitted_at.ToMilliseconds()
        )
        requests = case_requests(statuses, now=console.now())
        for row, status in zip(requests, statuses, strict=True):
            row.update({k: v for k, v in console.row(status).items() if k.startswith("can_")})
        graph: dict[str, Any] | None = None
        trail_problem = ""
        owner = statuses[0].case_ref.issuing_agency if statuses else ""
        try:
            trail = await console.bus.trail(
                case, issuing_agency="" if owner == console.config.agency_id else owner
            )
        except grpc.aio.AioRpcError as exc:
            details = error_details(exc)
            trail_problem = f"{details.code.name}: {details.message}"
        else:
            accounts = open_accounts(trail, console.encryption_key) if console.encryption_key else {}
            graph = trail_graph(trail, accounts)
        return self.page(
            request,
            "case.html",
            case=case,
            requests=requests,
            graph=graph,
            trail_problem=trail_problem,
            active="case",
        )

    async def sla(self, request: Request) -> Response:
        console = self.console(request)
        statuses = await console.bus.list_all()
        return self.page(request, "sla.html", sla=sla_view(statuses, now=console.now()), active="sla")

    async def action(self, request: Request) -> Response:
        console = self.console(request)
        request_id = request.path_params["request_id"]
        name = request.path_params["action"]
        form = await request.form()
        back = str(form.get("next", "/"))
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        refused = _csrf.check(request, str(form.get(_csrf.FIELD, "")))
        if refused is not None:
            return PlainTextResponse(refused, status_code=403)
        if name not in _ACTIONS:
            return PlainTextResponse("no such action", status_code=404)
        try:
            notice = await _act(console, name, request_id, form)
        except ConsoleError as exc:
            return _back(back, "problem", str(exc))
        except grpc.aio.AioRpcError as exc:
            details = error_details(exc)
            reason = f" ({details.reason})" if details.reason else ""
            return _back(
                back, "problem", f"the broker refused: {details.code.name}{reason}: {details.message}"
            )
        log.info("console.action", agency=console.config.agency_id, action=name, request_id=request_id)
        return _back(back, "notice", notice)


def create_app(config: ConsoleConfig) -> Starlette:
    """The console for ``config.agency_id``; its client opens and closes with the app."""
    signing_key = load_agency_signing_key(config.state_dir, config.agency_id)
    try:
        encryption_key: x25519.X25519PrivateKey | None = load_agency_encryption_key(
            config.state_dir, config.agency_id
        )
    except ProtocolError:
        encryption_key = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with BusClient(config.broker, agency_id=config.agency_id, signing_key=signing_key) as bus:
            agency = await bus.agency(config.agency_id)
            app.state.console = _Console(
                config=config, bus=bus, encryption_key=encryption_key, kind=_kind_name(agency.kind)
            )
            log.info("console.started", agency=config.agency_id, kind=app.state.console.kind)
            yield

    pages = _Pages()
    return Starlette(
        routes=[
            Route("/", pages.now),
            Route("/events", pages.events),
            Route("/cases/{case}", pages.case),
            Route("/sla", pages.sla),
            Route("/requests/{request_id}/{action}", pages.action, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        lifespan=lifespan,
    )


def _back(path: str, key: str, text: str) -> Response:
    joiner = "&" if "?" in path else "?"
    return RedirectResponse(f"{path.split('?', maxsplit=1)[0]}{joiner}{key}={quote(text)}", status_code=303)


def _amount(text: str) -> int | None:
    text = text.strip().replace(",", "")
    if not text:
        return None
    try:
        return minor_units(text)
    except ValueError as exc:
        raise ConsoleError(str(exc)) from None


async def _act(console: _Console, name: str, request_id: str, form: Any) -> str:
    bus = console.bus
    instrument = str(form.get("instrument", "")).strip()
    if name == "cancel":
        status = await _actions.cancel(bus, request_id, reason=str(form.get("reason", "")))
        return f"cancelled: {request_id[-12:]} is {state_name(status.state)}"
    target = await _actions.hold_target(bus, request_id, console.encryption_key)
    if name == "extend":
        hours_text = str(form.get("hours", "48")).strip() or "48"
        if not hours_text.isdigit() or int(hours_text) <= 0:
            raise ConsoleError(f"{hours_text!r} is not a number of hours")
        status = await _actions.extend(bus, target, hours=int(hours_text), instrument_id=instrument)
        return f"extension {status.id[-12:]} sent for {request_id[-12:]}"
    if name == "release":
        status = await _actions.release(
            bus,
            target,
            amount_minor=_amount(str(form.get("amount", ""))),
            reason=str(form.get("reason", "")),
            instrument_id=instrument,
        )
        return f"release {status.id[-12:]} sent for {request_id[-12:]}"
    status = await _actions.convert_to_freeze(bus, target, instrument_id=instrument)
    return f"freeze {status.id[-12:]} sent to convert {request_id[-12:]}"
