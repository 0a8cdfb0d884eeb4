"""Property-based fuzzing of every API route against a real ``outlast serve`` (hypothesis).

Generated JSON bodies, raw bytes, ids and query values for every route the app has: each is
answered below 500, an error as ``{"detail": "one line"}`` with no traceback, and a refused request
leaves the store as it was. Short by default; ``OUTLAST_SOAK=1`` runs hundreds of examples per route
from a new seed. A failure prints the seed (``OUTLAST_FUZZ_SEED=N`` replays it) and the failing example.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.fixtures_api import Server

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SOAK = os.environ.get("OUTLAST_SOAK") == "1"
EXAMPLES = 300 if SOAK else 15
pytestmark = pytest.mark.timeout(3600 if SOAK else 300)
SEED = int(os.environ.get("OUTLAST_FUZZ_SEED") or (random.randrange(2**32) if SOAK else 13))
"""The default run is the same every time; a soak explores from a new seed (printed on failure)."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def fuzz(test: Callable[..., None]) -> Callable[[], None]:
    """``test`` under FUZZ from SEED; a failure says which seed replays it (OUTLAST_FUZZ_SEED=...)."""
    seeded = seed(SEED)(FUZZ(test))

    def run() -> None:
        try:
            seeded()
        except BaseException as e:
            e.add_note(f"fuzzing seed {SEED}: replay with OUTLAST_FUZZ_SEED={SEED}")
            raise

    return run


CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
BUILTIN_TYPES = (
    "backup_operation",
    "codebase_indexing",
    "command",
    "comprehensive_test_suite",
    "demo",
    "security_scan",
    "kb_population",
    "kb_optimization",
    "vector_indexing",
    "semantic_analysis",
)


# ---- the server and what it holds -------------------------------------------------------------------


class Target:
    """A server whose engine runs nothing (what is accepted stays queued), with a few known records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.srv = Server(root, OUTLAST_MAX_MEMORY_PERCENT="0.01")
        src = root / "src"
        src.mkdir(exist_ok=True)
        (src / "a.py").write_text("x = 1\n")
        outputs = root / "state" / "outputs"
        outputs.mkdir(parents=True, exist_ok=True)
        self.paths = [str(src), str(root / "elsewhere.json"), f"{outputs}/x.json", f"{outputs}/../x", "/", ".", ".."]
        self.paths += ["../../x", "~/x", "~nobody-here/x", "out.json", "", "\x00", "a\x00b"]
        queued = self.srv.submit(params={"items": 1})
        cancelled = self.srv.submit(params={"items": 1})
        assert self.srv.http.post(f"/api/operations/{cancelled}/cancel").status_code == 200
        self.ids = [queued, cancelled]

    def listing(self) -> list[dict[str, Any]]:
        r = self.srv.http.get("/api/operations", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["items"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    t = Target(tmp_path_factory.mktemp("fuzz"))
    yield t
    t.srv.stop()


def app_routes(tmp: Path) -> set[tuple[str, str]]:
    """Every (method, path) a real app serves: HTTP from its OpenAPI document, WebSockets as ("WS", path)."""
    from engine.api.app import create_app
    from engine.api.ws import ws_router
    from engine.config import load_settings
    from engine.engine import Engine
    from engine.store import open_store

    app = create_app(Engine(open_store(tmp / "state"), settings=load_settings()))
    out = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    return out | {("WS", getattr(r, "path", "")) for r in ws_router.routes}


# ---- strategies -------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def op_id(draw: st.DrawFn, t: Target) -> str:
    """A known id or prefix, a well-formed unknown one, or anything at all (URL-quoted)."""
    raw = draw(
        st.one_of(
            st.sampled_from(t.ids).flatmap(lambda i: st.integers(1, len(i)).map(lambda n: i[:n])),
            st.text(CROCKFORD, min_size=1, max_size=13),
            st.text(CROCKFORD + "ILOU-_.", min_size=1, max_size=40),
            st.text(min_size=1, max_size=60),
            st.sampled_from(["..", ".", "%00", "a" * 5000, "0" * 14, "\x1b[2J", "06b2w5rv\n"]),
        )
    )
    return quote(raw, safe="")


@st.composite
def params_for(draw: st.DrawFn, t: Target, type_: str) -> dict[str, Any]:
    """Params with the type's own field names (so validation goes deep), values plausible or not."""
    from engine.api.confine import WRITTEN
    from engine.registry import handlers

    spec = handlers().get(type_)
    fields = list(spec.params.model_fields) if spec else []
    value = st.one_of(json_value, st.sampled_from(t.paths), st.lists(st.sampled_from(t.paths), max_size=3))
    keys = st.sampled_from(fields) if fields else st.text(max_size=10)
    params = draw(st.dictionaries(st.one_of(keys, st.text(max_size=10)), value, max_size=5))
    for f in WRITTEN.get(type_, ()):  # where it writes: often a path, plausible or hostile
        if draw(st.booleans()):
            params[f] = draw(st.sampled_from(t.paths))
    return params


@st.composite
def spec_body(draw: st.DrawFn, t: Target, typed: bool) -> Any:
    """A submit body: mostly a spec with some fields right and some wrong, sometimes any JSON."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)
    type_ = draw(st.one_of(st.sampled_from(BUILTIN_TYPES), st.text(max_size=20)))
    fields = {
        "params": params_for(t, type_),
        "priority": st.one_of(st.sampled_from(["critical", "high", "normal", "low"]), json_value),
        "profile": st.one_of(
            st.dictionaries(
                st.sampled_from(["max_timeout", "base_timeout", "stall_timeout", "checkpoint_interval", "nope"]),
                st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=5)),
                max_size=3,
            ),
            json_value,
        ),
        "name": st.one_of(st.text(max_size=250), json_value),
        "total_items": st.one_of(st.integers(min_value=-(2**65), max_value=2**65), json_value),
        "timeout": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_value),
        "tags": st.one_of(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=4), json_value),
        "bogus": json_value,
    }
    body = draw(st.fixed_dictionaries({}, optional=fields))
    if not typed:
        body["type"] = type_
    return body


def raw_body() -> st.SearchStrategy[bytes]:
    """Bytes that are not a JSON document: cut, not UTF-8, nested past any recursion limit, empty."""
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"", b"{", b"[" * 30_000 + b"]" * 30_000, b'{"type": "demo"', b"\xff\xfe", b"null", b"NaN"]),
        st.integers(1, 50_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    )


QUERY = st.one_of(st.integers(-(2**64), 2**64), st.text(max_size=30), st.sampled_from(["", "1e9", "nan", "-0"]))


@st.composite
def request(draw: st.DrawFn, t: Target, method: str, path: str) -> tuple[str, str, dict[str, Any]]:
    """One request to the route ``path``: its ids, query and body generated."""
    url = path.replace("{op_id}", draw(op_id(t))) if "{op_id}" in path else path
    kwargs: dict[str, Any] = {}
    if method == "GET":
        names = {
            "/api/operations": ["status", "type", "limit", "offset"],
            "/api/operations/": ["status", "type", "limit", "offset"],
            "/api/operations/{op_id}/logs": ["offset", "limit"],
        }.get(path, [])
        if names:
            kwargs["params"] = draw(
                st.dictionaries(st.sampled_from([*names, "x"]), st.one_of(QUERY, st.sampled_from(["running", "demo"])))
            )
    else:
        typed = path.startswith("/api/operations/") and "{op_id}" not in path
        if path.endswith("/resume"):
            body = st.one_of(
                st.fixed_dictionaries({}, optional={"checkpoint": json_value, "x": json_value}), json_value
            )
        elif path.endswith(("/cancel", "/pause")):
            body = json_value
        else:
            body = spec_body(t, typed)
        if draw(st.integers(0, 5)) == 0:
            kwargs["content"] = draw(raw_body())
            kwargs["headers"] = {"content-type": draw(st.sampled_from(["application/json", "text/plain", "x/y"]))}
        elif draw(st.booleans()) or method == "POST":
            kwargs["content"] = json.dumps(draw(body)).encode()
            kwargs["headers"] = {"content-type": "application/json"}
    return method, url, kwargs


# ---- the properties ---------------------------------------------------------------------------------


def check_answer(t: Target, method: str, url: str, kwargs: dict[str, Any]) -> None:
    before = t.listing()
    r = t.srv.http.request(method, url, **kwargs)
    where = f"{method} {url} {str(kwargs)[:300]}"
    assert r.status_code < 500, f"{where} -> {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), f"{where} -> {r.text[:200]}"
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail.strip(), f"{where} -> {r.text[:200]}"
        assert "\n" not in detail and "Traceback" not in detail, f"{where} -> {detail[:300]}"
        after = t.listing()
        assert after == before, f"{where} -> {r.status_code} but the store changed"


# Written out, not read from the app: building one at collection cost every xdist worker 0.8 s of CPU.
HTTP_ROUTES = (
    ("GET", "/api/health"),
    ("GET", "/api/operations"),
    ("GET", "/api/operations/"),
    ("GET", "/api/operations/{op_id}"),
    ("GET", "/api/operations/{op_id}/checkpoints"),
    ("GET", "/api/operations/{op_id}/checkpoints/{seq}"),
    ("GET", "/api/operations/{op_id}/logs"),
    ("GET", "/api/types"),
    ("GET", "/metrics"),
    ("POST", "/api/operations"),
    ("POST", "/api/operations/codebase/index"),
    ("POST", "/api/operations/knowledge-base/populate"),
    ("POST", "/api/operations/security/scan"),
    ("POST", "/api/operations/testing/comprehensive"),
    ("POST", "/api/operations/{op_id}/cancel"),
    ("POST", "/api/operations/{op_id}/pause"),
    ("POST", "/api/operations/{op_id}/resume"),
)


def test_every_route_is_fuzzed(tmp_path: Path) -> None:
    """A new route fails this until it is in the fuzzing below (HTTP_ROUTES)."""
    routes = app_routes(tmp_path)
    assert routes - {("WS", p) for p in WS_ROUTES} == set(HTTP_ROUTES)
    assert {p for m, p in routes if m == "WS"} == set(WS_ROUTES)


@pytest.mark.parametrize(("method", "path"), HTTP_ROUTES)
def test_http_route_answers_hostile_input_in_one_line(target: Target, method: str, path: str) -> None:
    @fuzz
    @given(st.data())
    def run(data: st.DataObject) -> None:
        check_answer(target, *data.draw(request(target, method, path)))

    run()


WS_ROUTES = ("/api/operations/progress", "/api/operations/{op_id}/progress")


def test_websocket_routes_answer_any_id(target: Target) -> None:
    ws_client = pytest.importorskip("websockets.sync.client")
    closed = pytest.importorskip("websockets.exceptions").ConnectionClosed
    refused = pytest.importorskip("websockets.exceptions").InvalidStatus

    @fuzz
    @given(st.data())
    def run(data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(WS_ROUTES))
        url = path.replace("{op_id}", data.draw(op_id(target)))
        try:
            ws = ws_client.connect(f"{target.srv.ws_url}{url}", open_timeout=30)
        except refused as e:  # an id that makes the path no route at all (`%2F`): the handshake is refused
            assert 400 <= e.response.status_code < 500, e.response.status_code
            return
        with ws:
            if data.draw(st.booleans()):
                with contextlib.suppress(closed):  # an unknown id may be closed already
                    ws.send(data.draw(st.one_of(st.text(max_size=100), st.binary(max_size=100))))  # ignored
            first = json.loads(ws.recv(timeout=30))
            assert first["type"] in ("snapshot", "error"), first
            if first["type"] == "error":
                assert "\n" not in first["detail"] and first["detail"].strip()
                with pytest.raises(closed):
                    ws.recv(timeout=30)
                assert ws.close_code in (4404, 4422), ws.close_code

    run()


def test_tokens_and_origins_are_checked_before_anything(start_server) -> None:
    """With a token, any request without it is 401 whatever its body; no origin of another site gets in."""
    from tests.fixtures_api import TOKEN

    srv: Server = start_server(token=TOKEN, OUTLAST_MAX_MEMORY_PERCENT="0.01", OUTLAST_API_TOKEN=TOKEN)
    import httpx

    bare = httpx.Client(base_url=srv.url, timeout=30)

    @fuzz
    @given(
        st.sampled_from(["/api/operations", "/api/operations/security/scan", "/api/health", "/metrics"]),
        st.one_of(
            st.none(),
            st.text(string.ascii_letters + string.digits + " -._~+/=", max_size=40).filter(lambda s: s == s.strip()),
        ),
        st.binary(max_size=100),
    )
    def run(path: str, auth: str | None, body: bytes) -> None:
        headers = {"authorization": auth} if auth is not None else {}
        r = bare.post(path, content=body, headers=headers)
        assert r.status_code == 401 and "\n" not in r.json()["detail"]

    try:
        run()
    finally:
        bare.close()
    assert srv.http.get("/api/operations").json()["items"] == []


def test_host_names_a_loopback_server_does_not_answer_to(target: Target) -> None:
    """A loopback server without a token answers only to loopback names (DNS rebinding): any other Host
    gets 400 with one line, and changes nothing."""

    @fuzz
    @given(
        st.text(string.ascii_letters + string.digits + "-.:[]_@", max_size=60),
        st.sampled_from(["/api/health", "/api/operations", "/api/operations/security/scan", "/metrics"]),
    )
    def run(host: str, path: str) -> None:
        method = "POST" if path.endswith("scan") else "GET"
        before = target.listing()
        r = target.srv.http.request(method, path, headers={"host": host}, json={"params": {"root": "/"}})
        name = host.lower() if host.endswith("]") else host.lower().rsplit(":", 1)[0]
        if name in ("127.0.0.1", "localhost", "::1", "[::1]"):
            return
        assert r.status_code == 400, (host, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and "\n" not in r.json()["detail"], r.text
        assert target.listing() == before

    run()


def test_json_nested_near_the_parsers_limit(target: Target) -> None:
    """Objects nested about as deep as the JSON parser goes: parsed by one reader of the body and not by
    a deeper one, they were a RecursionError (500) and a dropped connection (found with seed 13)."""
    for depth in range(900, 1001, 2):
        body = b'{"a":' * depth + b"1" + b"}" * depth
        for path in ("/api/operations", "/api/operations/security/scan"):
            check_answer(target, "POST", path, {"content": body, "headers": {"content-type": "application/json"}})
