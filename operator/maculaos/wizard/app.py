"""The first-boot wizard's web app (Starlette): the node's name, its URL and QR code; the setup secret
(typed or from the console's QR code) opens a session; the settings pages write config.yaml; the Portal
code pairs the node and ends first-boot mode.

Safety: every change needs a session, and a session needs the setup secret; every form carries a CSRF
token that must match its cookie (and the cookies are SameSite=Strict, Secure); repeated wrong secrets
lock the login for a while; nothing secret is logged (the server's access log is off: a query string may
hold the secret)."""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from maculaos.host.config import HostConfigError, read_config
from maculaos.host.firstboot import is_configured, mark_configured, secret_matches
from maculaos.host.portal import PairingError, pair, store_credentials
from maculaos.wizard.errors import StepError
from maculaos.wizard.pairing import NodeSetup, qr_svg
from maculaos.wizard.steps import BY_NAME, STEPS, Step, apply_step, current_values

log = logging.getLogger("maculaos.wizard")

SESSION, CSRF = "maculaos_session", "maculaos_csrf"
MAX_FAILURES, LOCKOUT_SECONDS = 5, 60.0


@dataclass
class WizardState:
    setup: NodeSetup
    on_paired: Callable[[], None] = lambda: None
    """Called once the node is paired and configured (the server stops listening)."""
    sessions: set[str] = field(default_factory=set)
    failures: int = 0
    locked_until: float = 0.0
    clock: Callable[[], float] = time.monotonic


STYLE = ("body{font-family:sans-serif;max-width:44em;margin:2em auto;padding:0 1em}label{display:block;"
         "margin-top:1em;font-weight:bold}input[type=text],input[type=password],textarea,select{width:100%}"
         ".error{color:#a00;border:1px solid #a00;padding:.5em}.note{background:#ffd;padding:.5em}"
         "small{color:#555}")


HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                      "form-action 'self'"}


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                        f"content='width=device-width'><title>{html.escape(title)}</title><style>{STYLE}</style>"
                        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>", status_code=status,
                        headers=HEADERS)


def error_box(message: str) -> str:
    return f"<p class='error' role='alert'>{html.escape(message)}</p>" if message else ""


def csrf_token(request: Request) -> str:
    return request.cookies.get(CSRF) or secrets.token_urlsafe(24)


def with_cookies(response: Response, request: Request, token: str, session: str = "") -> Response:
    if request.cookies.get(CSRF) != token:
        response.set_cookie(CSRF, token, secure=True, httponly=True, samesite="strict")
    if session:
        response.set_cookie(SESSION, session, secure=True, httponly=True, samesite="strict")
    return response


def hidden(token: str) -> str:
    return f"<input type='hidden' name='csrf' value='{html.escape(token)}'>"


class Wizard:
    """The handlers over one WizardState."""

    def __init__(self, state: WizardState) -> None:
        self.state = state

    @property
    def setup(self) -> NodeSetup:
        return self.state.setup

    def signed_in(self, request: Request) -> bool:
        return request.cookies.get(SESSION, "") in self.state.sessions

    async def checked_form(self, request: Request) -> dict[str, str] | None:
        """The form's fields when its CSRF token matches the cookie; None otherwise."""
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        cookie, sent = request.cookies.get(CSRF, ""), values.pop("csrf", "")
        if not cookie or not secrets.compare_digest(cookie.encode(), sent.encode()):
            return None
        return values

    def configured(self) -> Response | None:
        if is_configured(self.setup.host_root):
            return page("Configured", "<p>This node is configured; the wizard is closed.</p>", 410)
        return None

    def refused_form(self) -> Response:
        return page("Refused", error_box("The form is stale or came from another site (CSRF check failed): "
                                         "reload the page and send it again."), 403)

    # --- the landing page and the setup secret

    def home_body(self, token: str, message: str = "") -> str:
        return (f"<p>Node <b>{html.escape(self.setup.name)}</b></p>"
                f"<p>Wizard: <a href='{html.escape(self.setup.url)}'>{html.escape(self.setup.url)}</a></p>"
                f"<div>{qr_svg(self.setup.url)}</div>"
                f"<p><small>Certificate SHA-256: {html.escape(self.setup.fingerprint)}</small></p>"
                f"{error_box(message)}"
                "<form method='post' action='/login'>"
                f"{hidden(token)}<label for='code'>Setup code (shown on the node's console)</label>"
                "<input type='text' id='code' name='code' autocomplete='off' autocapitalize='characters'>"
                "<p><button>Continue</button></p></form>")

    async def home(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        if self.signed_in(request):
            return RedirectResponse("/settings", 303)
        token = csrf_token(request)
        return with_cookies(page(f"Set up {self.setup.name}", self.home_body(token)), request, token)

    def try_secret(self, request: Request, typed: str) -> Response:
        token = csrf_token(request)
        now = self.state.clock()
        if now < self.state.locked_until:
            wait = int(self.state.locked_until - now) + 1
            return with_cookies(page(f"Set up {self.setup.name}", self.home_body(
                token, f"Too many wrong setup codes: wait {wait} s and try again."), 429), request, token)
        if not secret_matches(self.setup.secret, typed):
            self.state.failures += 1
            if self.state.failures >= MAX_FAILURES:
                self.state.failures, self.state.locked_until = 0, now + LOCKOUT_SECONDS
            log.warning("wizard: a wrong setup code was entered")
            return with_cookies(page(f"Set up {self.setup.name}", self.home_body(
                token, "That is not this node's setup code: type the code its console shows."), 403),
                request, token)
        self.state.failures = 0
        session = secrets.token_urlsafe(32)
        self.state.sessions.add(session)
        log.info("wizard: a session was opened with the setup code")
        return with_cookies(RedirectResponse("/settings", 303), request, token, session)

    async def login_link(self, request: Request) -> Response:
        """GET /login?secret=...: the console's QR code (then the secret leaves the address bar)."""
        if (closed := self.configured()) is not None:
            return closed
        return self.try_secret(request, request.query_params.get("secret", ""))

    async def login(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        form = await self.checked_form(request)
        if form is None:
            return self.refused_form()
        return self.try_secret(request, form.get("code", ""))

    # --- settings

    async def settings(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        if not self.signed_in(request):
            return RedirectResponse("/", 303)
        try:
            values = current_values(read_config(self.setup.host_root))
        except HostConfigError as exc:
            values = {}
            log.warning("wizard: config.yaml not read: %s", exc)
        saved = request.query_params.get("saved", "")
        done = f"<p class='note'>Saved: {html.escape(BY_NAME[saved].title)}</p>" if saved in BY_NAME else ""
        rows = "".join(f"<li><a href='/step/{s.name}'>{html.escape(s.title)}</a> "
                       f"<small>{html.escape(self.summary(s, values))}</small></li>" for s in STEPS)
        token = csrf_token(request)
        body = (f"{done}<p>Each setting is written to the node's config.yaml when you save it.</p><ul>{rows}</ul>"
                "<h2>Pair with the Macula Portal</h2><p>Last: enter the code the Portal shows. The node joins "
                "your organisation and leaves first-boot mode.</p><p><a href='/pair'>Pair</a></p>")
        return with_cookies(page(f"Settings of {self.setup.name}", body), request, token)

    @staticmethod
    def summary(step: Step, values: dict[str, str]) -> str:
        shown = [values[f.name] for f in step.fields if f.kind not in ("password", "textarea") and f.name in values]
        return ", ".join(shown) or "not set"

    def step_form(self, step: Step, token: str, values: dict[str, str], message: str = "") -> str:
        fields = []
        for f in step.fields:
            value = html.escape(values.get(f.name, "")) if f.kind != "password" else ""
            label = f"<label for='{f.name}'>{html.escape(f.label)}</label>"
            if f.kind == "textarea":
                widget = f"<textarea id='{f.name}' name='{f.name}' rows='5'>{value}</textarea>"
            elif f.kind == "select":
                options = "".join(f"<option{' selected' if values.get(f.name) == c else ''}>{html.escape(c)}</option>"
                                  for c in f.choices)
                widget = f"<select id='{f.name}' name='{f.name}'>{options}</select>"
            elif f.kind == "checkbox":
                widget = (f"<input type='checkbox' id='{f.name}' name='{f.name}'"
                          f"{' checked' if values.get(f.name) == 'on' else ''}>")
            else:
                widget = f"<input type='{f.kind}' id='{f.name}' name='{f.name}' value='{value}' autocomplete='off'>"
            fields.append(f"{label}{widget}<br><small>{html.escape(f.help)}</small>")
        note = f"<p class='note'>{html.escape(step.note)}</p>" if step.note else ""
        return (f"{error_box(message)}{note}<form method='post' action='/step/{step.name}'>{hidden(token)}"
                f"{''.join(fields)}<p><button>Save</button> <a href='/settings'>Back</a></p></form>")

    async def step_page(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        if not self.signed_in(request):
            return RedirectResponse("/", 303)
        step = BY_NAME.get(request.path_params["step"])
        if step is None:
            return page("Not found", "<p>No such settings page.</p>", 404)
        token = csrf_token(request)
        try:
            values = current_values(read_config(self.setup.host_root))
        except HostConfigError:
            values = {}
        return with_cookies(page(step.title, self.step_form(step, token, values)), request, token)

    async def save_step(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        if not self.signed_in(request):
            return page("Refused", error_box("Enter the setup code first."), 403)
        step = BY_NAME.get(request.path_params["step"])
        if step is None:
            return page("Not found", "<p>No such settings page.</p>", 404)
        form = await self.checked_form(request)
        if form is None:
            return self.refused_form()
        try:
            await run_in_threadpool(apply_step, self.setup.host_root, step, form)
        except (StepError, HostConfigError) as exc:
            token = csrf_token(request)
            return with_cookies(page(step.title, self.step_form(step, token, form, str(exc)), 400), request, token)
        log.info("wizard: %s saved to config.yaml", step.name)
        return RedirectResponse(f"/settings?saved={step.name}", 303)

    # --- pairing

    def pair_form(self, token: str, message: str = "") -> str:
        return (f"{error_box(message)}<form method='post' action='/pair'>{hidden(token)}"
                "<label for='portal_code'>Portal code</label>"
                "<input type='text' id='portal_code' name='portal_code' autocomplete='off'>"
                "<p><button>Pair</button> <a href='/settings'>Back</a></p></form>")

    async def pair_page(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        if not self.signed_in(request):
            return RedirectResponse("/", 303)
        token = csrf_token(request)
        return with_cookies(page("Pair with the Macula Portal", self.pair_form(token)), request, token)

    async def pair(self, request: Request) -> Response:
        if (closed := self.configured()) is not None:
            return closed
        if not self.signed_in(request):
            return page("Refused", error_box("Enter the setup code first."), 403)
        form = await self.checked_form(request)
        if form is None:
            return self.refused_form()
        try:
            credentials = await run_in_threadpool(pair, self.setup.portal_url, form.get("portal_code", ""),
                                                  self.setup.name)
        except PairingError as exc:
            log.warning("wizard: pairing failed: %s", exc.failure)
            token = csrf_token(request)
            return with_cookies(page("Pair with the Macula Portal", self.pair_form(token, str(exc)), 400),
                                request, token)
        await run_in_threadpool(store_credentials, self.setup.host_root, credentials)
        await run_in_threadpool(mark_configured, self.setup.host_root)
        self.state.sessions.clear()
        log.info("wizard: paired with the Portal (organisation %s); first-boot mode ends", credentials.org_id)
        self.state.on_paired()
        return page("Paired", f"<p>{html.escape(self.setup.name)} belongs to "
                              f"<b>{html.escape(credentials.org_name or credentials.org_id)}</b> now, paired by "
                              f"{html.escape(credentials.user_name)}. Its settings are applied; this wizard "
                              "closes.</p>")


def build_app(state: WizardState) -> Starlette:
    wizard = Wizard(state)
    return Starlette(routes=[
        Route("/", wizard.home),
        Route("/login", wizard.login_link, methods=["GET"]),
        Route("/login", wizard.login, methods=["POST"]),
        Route("/settings", wizard.settings),
        Route("/step/{step}", wizard.step_page, methods=["GET"]),
        Route("/step/{step}", wizard.save_step, methods=["POST"]),
        Route("/pair", wizard.pair_page, methods=["GET"]),
        Route("/pair", wizard.pair, methods=["POST"]),
    ])


def redirect_app(tls_port: int) -> Starlette:
    """Port 80: every request goes to the HTTPS wizard, nothing else is served."""
    async def to_https(request: Request) -> Response:
        host = (request.url.hostname or "localhost").strip("[]")
        host = f"[{host}]" if ":" in host else host
        port = "" if tls_port == 443 else f":{tls_port}"
        return RedirectResponse(f"https://{host}{port}{request.url.path}", 301)
    return Starlette(routes=[Route("/{path:path}", to_https, methods=["GET", "HEAD", "POST"])])
