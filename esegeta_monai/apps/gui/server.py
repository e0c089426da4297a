"""The GUI's web application and the ``esegeta gui`` server.

:func:`create_app` builds the Starlette application: the page (``GET /``, the Jinja2 template
``templates/index.html.j2``), its static files (``/static``) and the JSON API
(:mod:`esegeta_monai.apps.gui.api`), all behind :class:`TokenMiddleware`. :func:`serve` runs it
with uvicorn on 127.0.0.1 and opens the browser on a URL that carries the token, as Jupyter does.

Security model: the server listens on the loopback interface unless told otherwise; every request
needs the random token (``Authorization: Bearer …``, or the HttpOnly, SameSite=Strict cookie that
the first ``/?token=…`` URL sets); only files under the roots given at start are readable
(:mod:`esegeta_monai.apps.gui.paths`) and only the output folder is written; jobs run as separate
processes, and bundle configs (which hold code) are only opened under the roots.

Example:
    >>> import tempfile
    >>> from starlette.testclient import TestClient
    >>> from esegeta_monai.apps.gui import create_app
    >>> app = create_app(roots=[tempfile.mkdtemp()], out=tempfile.mkdtemp(), token="secret")
    >>> client = TestClient(app)
    >>> client.get("/api/roots").status_code, client.get("/api/roots", headers={"Authorization": "Bearer secret"}).status_code
    (401, 200)
"""

from __future__ import annotations

import functools
import html
import ipaddress
import os
import secrets
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Sequence
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from esegeta_monai import __version__
from esegeta_monai.apps.gui import api
from esegeta_monai.apps.gui.api import JSONResponse
from esegeta_monai.apps.gui.jobs import JobManager
from esegeta_monai.apps.gui.paths import Roots
from esegeta_monai.errors import EsegetaError

__all__ = ["create_app", "serve", "default_roots", "TokenMiddleware", "COOKIE", "DEFAULT_OUT"]

#: the cookie that carries the token after the first page
COOKIE = "esegeta_token"
DEFAULT_OUT = "esegeta_gui_out"
HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
INDEX_TEMPLATE = "index.html.j2"
#: headers on every response: no MIME sniffing, no referrer (URLs may carry the token), no framing by other sites
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"SAMEORIGIN")]


def default_roots() -> list[Path]:
    """The current folder, and the shipped demo bundles (``<repository>/bundles``) when they exist."""
    roots = [Path.cwd()]
    shipped = HERE.parents[2] / "bundles"
    if shipped.is_dir() and shipped.resolve() != Path.cwd().resolve():
        roots.append(shipped)
    return roots


class TokenMiddleware:
    """Lets a request through when it carries ``token``: as ``Authorization: Bearer``, as the
    cookie, or — for a GET, which is then redirected to the same URL without it, setting the
    cookie — as ``?token=``. Others get 401: JSON under ``/api``, a short page elsewhere."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token

    def _matches(self, value: str | None) -> bool:
        return bool(value) and secrets.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and self._matches(given[-1]):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            response: Response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            await _secured(response)(scope, receive, send)
            return
        authorization = headers.get("authorization", "")
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            cookie = SimpleCookie()
        if self._matches(bearer) or (COOKIE in cookie and self._matches(cookie[COOKIE].value)):
            await self.app(scope, receive, _with_security_headers(send))
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        reason = "a wrong token" if (given or bearer or COOKIE in cookie) else "no token"
        if scope["path"].startswith("/api"):
            response = JSONResponse({"error": f"{reason}: send 'Authorization: Bearer <token>' (the token that "
                                              "`esegeta gui` printed), or open the URL it printed"}, status_code=401)
        else:
            response = HTMLResponse(
                "<!doctype html><title>esegeta GUI: access token needed</title><h1>Access token needed</h1>"
                f"<p>This page was opened with {html.escape(reason)}. Open the address that <code>esegeta gui</code> "
                "printed in the terminal: it ends with <code>?token=…</code>.</p>", status_code=401)
        response.headers["WWW-Authenticate"] = "Bearer"
        await _secured(response)(scope, receive, send)


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            message["headers"] = list(message.get("headers", [])) + [h for h in SECURITY_HEADERS if h[0] not in present]
        await send(message)

    return wrapped


def _secured(response: Response) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, _with_security_headers(send))

    return app


class _Static(StaticFiles):
    """The page's static files (revalidated on every load, so an upgrade never runs old scripts);
    a 404 that says so when they are not installed."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not STATIC.is_dir():
            await PlainTextResponse(f"the GUI's static files are not installed ({STATIC})", 404)(scope, receive, send)
            return

        async def revalidated(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"cache-control", b"no-cache")]}
            await send(message)

        await super().__call__(scope, receive, revalidated)


@functools.lru_cache(maxsize=1)
def _templates():
    from starlette.templating import Jinja2Templates

    return Jinja2Templates(directory=str(TEMPLATES))


async def index(request: Request) -> Response:
    """The application page, from ``templates/index.html.j2``."""
    if not (TEMPLATES / INDEX_TEMPLATE).is_file():
        return PlainTextResponse(f"the GUI's page template is missing: {TEMPLATES / INDEX_TEMPLATE}. Reinstall "
                                 "esegeta_monai (its package data holds the templates).", status_code=500)
    gui: api.GuiState = request.app.state.gui
    templates = _templates()
    context = {"token": gui.token, "version": __version__, "roots": [r.as_dict() for r in gui.roots.roots]}
    return templates.TemplateResponse(request, INDEX_TEMPLATE, context, headers={"Cache-Control": "no-store"})


async def _http_error(request: Request, error: HTTPException) -> Response:
    if request.url.path.startswith("/api"):
        detail = f"{request.method} {request.url.path}: {error.detail}"
        if error.status_code == 404:
            detail += "; the API is listed in the module docstring of esegeta_monai.apps.gui.api"
        return JSONResponse({"error": detail}, status_code=error.status_code, headers=getattr(error, "headers", None))
    return PlainTextResponse(str(error.detail), status_code=error.status_code)


async def _server_error(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": f"internal error: {type(error).__name__}: {error} (the server's console has the details)"},
                        status_code=500)


def create_app(roots: Sequence[str | os.PathLike] | None = None, out: str | os.PathLike = DEFAULT_OUT,
               token: str | None = None, max_upload_mb: float = 512, max_parallel: int = 1) -> Starlette:
    """The GUI application.

    Args:
        roots: the folders whose files may be read (default: :func:`default_roots`).
        out: where jobs and uploads are written (created; readable as root ``out``).
        token: the access token (default: a new random one; ``app.state.gui.token``).
        max_upload_mb: the largest upload, in MiB.
        max_parallel: jobs running at once; the others wait in a queue.
    """
    folders = list(roots) if roots else default_roots()
    state = api.GuiState(Roots(folders, out), JobManager(out, max_parallel=max_parallel),
                         token or secrets.token_urlsafe(32), max_upload_mb)
    routes = [Route("/", index), Mount("/static", app=_Static(directory=str(STATIC), check_dir=False), name="static"),
              *api.routes()]
    handlers = {**api.exception_handlers(), HTTPException: _http_error, 500: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.gui = state
    app.add_middleware(TokenMiddleware, token=state.token)
    return app


# ----------------------------------------------------------------------------------------- serve


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listening_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise EsegetaError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                           "(0: any free port) or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int, token: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/?token={token}"


def serve(roots: Sequence[str | os.PathLike] | None = None, out: str | os.PathLike = DEFAULT_OUT,
          host: str = "127.0.0.1", port: int = 0, open_browser: bool = True, max_upload_mb: float = 512,
          max_parallel: int = 1) -> int:
    """Run the GUI until Ctrl-C: print its URL (with the token), open the browser on it; returns 0.

    ``port=0`` takes a free port. A host other than the loopback interface makes the GUI reachable
    from the network: a warning says so.
    """
    import uvicorn

    app = create_app(roots, out, max_upload_mb=max_upload_mb, max_parallel=max_parallel)
    gui: api.GuiState = app.state.gui
    if not _is_loopback(host):
        print(f"esegeta gui: WARNING: listening on {host}, not on the loopback interface: other machines can reach "
              "this server. Whoever has the token can read every file under the roots and run the bundles' code.",
              file=sys.stderr)
    sock = _listening_socket(host, port)
    url = _url(host, sock.getsockname()[1], gui.token)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    print(f"esegeta gui {__version__}: reading {', '.join(str(r.path) for r in gui.roots.roots if r.id != 'out')}; "
          f"writing to {gui.roots.out}")
    print(f"open this address in a browser (Ctrl-C stops the server):\n    {url}", flush=True)
    if open_browser:
        threading.Thread(target=_open_when_started, args=(server, url), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    running = [j.id for j in gui.jobs.jobs() if j.status == "running"]
    if running:
        print(f"esegeta gui: stopped; {len(running)} job(s) still run in the background ({', '.join(running)}) and show "
              f"when `esegeta gui --out {out}` starts again", file=sys.stderr)
    return 0


def _open_when_started(server, url: str) -> None:
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.started:
        webbrowser.open(url)
