"""load_testing: a bounded HTTP load run against one URL, checkpointed per time slice.

The run is ``duration`` seconds cut into slices of ``slice_seconds``; each slice is an item. ``concurrency``
connections (HTTP/1.1, kept alive) send requests until the slice ends, the run's ``requests`` budget is spent,
or, with a ``rate`` target, the slice's share of the run's schedule is sent (the run's request n is due at n /
rate seconds into the run, and a slice lasts its length: with a rate, each slice sends the same requests
however loaded the machine is; late requests are sent late, never dropped). A slice's statistics (requests,
errors by kind, status codes, bytes, a latency histogram at 3 significant digits) are merged into
``ctx.state`` when it ends, and a checkpoint is taken, so a resume goes on with the next slice and the
remaining budget, and the final statistics (percentiles from the merged histogram) cover every slice. A slice
cut by a kill is run again.

Targets must be on this machine (loopback addresses, checked again after resolving the name when the run
starts) unless ``allow_remote`` is true: a load test is a denial of service to a host that did not ask for one.

The client is asyncio streams and a small HTTP/1.1 reader (status line, headers, Content-Length or chunked
bodies). httpx is only a test dependency here, and a general-purpose client spends most of its time on
features a load generator does not need: measured here against the same local server, httpx's AsyncClient
sent about 440 requests per CPU second of the client, this one about 7,600, so the generator is not the
bottleneck of what it measures.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import math
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..context import OperationContext
from ..humanize import duration as human_duration
from ..registry import operation

MAX_HEADER_BYTES = 64 << 10
MAX_INTERIM = 16
"""1xx responses read before a response's own (HTTP allows several; one per Expect or Early Hints is usual)."""
MAX_SLICES = 10_000
"""Each slice leaves a line in the timeline kept in ctx.state (saved at every checkpoint)."""


class LoadTestParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan was refused as "more than the most"

    # allow_remote first: the url's check reads it (validated fields come in declaration order)
    allow_remote: bool = Field(default=False, description="allow a target that is not on this machine")
    url: str = Field(description="http:// or https:// URL to load")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    body: str | None = Field(default=None, description="request body (UTF-8)")
    rate: float | None = Field(default=None, gt=0, le=1_000_000, description="target requests/s (default: no limit)")
    concurrency: int = Field(default=10, ge=1, le=1000, description="connections sending at once")
    duration: float = Field(default=10.0, gt=0, le=7 * 86_400, description="seconds to run in all")
    requests: int | None = Field(default=None, ge=1, le=10**9, description="stop after this many requests")
    slice_seconds: float = Field(default=1.0, ge=0.05, le=60, description="seconds per checkpointed slice")
    timeout: float = Field(default=10.0, gt=0, le=600, description="seconds a request may take")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        u = urlsplit(v)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"url {v!r}: expected http:// or https://")
        if not u.hostname:
            raise ValueError(f"url {v!r} has no host")
        try:
            port = u.port
        except ValueError as e:
            raise ValueError(f"url {v!r}: {e}") from None
        if port == 0:  # no server listens there: every request failed to connect, for the whole duration
            raise ValueError(f"url {v!r}: port 0 is no port to connect to")
        if not info.data.get("allow_remote", False):
            refusal = not_loopback(v)
            if refusal:
                raise ValueError(refusal)
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not k or any(c in k for c in ":\r\n ") or any(c in val for c in "\r\n"):
                raise ValueError(f"header {k!r}: names have no ':', spaces or line breaks; values no line breaks")
            if not k.isascii() or not all(ord(c) < 256 for c in val):
                # sent as latin-1, each other letter was replaced by '?': a header the user never wrote
                raise ValueError(f"header {k!r}: names are ASCII and values latin-1 (HTTP/1.1 sends bytes)")
        return v

    @model_validator(mode="after")
    def _bounded(self, info: ValidationInfo) -> LoadTestParams:
        if self.slices > MAX_SLICES:
            raise ValueError(f"duration / slice_seconds is {self.slices} slices: at most {MAX_SLICES}")
        # At submit, the longest the operation may run (validation context): a run that cannot fit in it was
        # accepted, then stopped as timed out. Not with ``requests``, which may end it well before its duration.
        found = info.context.get("timeout_limit") if isinstance(info.context, dict) else None
        if found is not None and self.requests is None and self.duration + self.timeout > found[0]:
            limit, key = found
            raise ValueError(
                f"duration {_seconds(self.duration)} does not fit in the operation's {key} of {_seconds(limit)}, a"
                f" request's timeout ({self.timeout:g}s) after it included: shorten it, or raise {key}"
            )
        return self

    @property
    def slices(self) -> int:
        return max(1, math.ceil(self.duration / self.slice_seconds - 1e-9))


def _seconds(value: float) -> str:
    """``25200s (7h00m)``; ``50s`` alone when that is all the longer form says."""
    raw, human = f"{value:g}s", human_duration(value)
    return raw if human == raw else f"{raw} ({human})"


def _host_port(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return u.hostname or "", u.port or (443 if u.scheme == "https" else 80)


def resolve(url: str) -> list[str]:
    """The addresses ``url``'s host resolves to (an IP literal as itself); OSError when it does not resolve."""
    host, port = _host_port(url)
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


def not_loopback(url: str) -> str | None:
    """Why ``url`` may not be loaded without allow_remote (None when every address it names is loopback)."""
    host, _ = _host_port(url)
    try:
        addrs = resolve(url)
    except OSError as e:
        return f"{url!r}: host {host!r} does not resolve ({e.strerror or e})"
    far = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if far:
        return f"{url!r}: {far[0]} is not a loopback address; load tests go to other hosts only with allow_remote=true"
    return None


@dataclass
class SliceStats:
    requests: int = 0
    ok: int = 0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    hist: dict[str, int] = field(default_factory=dict)
    """Latency in ms at 3 significant digits -> count."""
    sum_ms: float = 0.0
    min_ms: float | None = None
    max_ms: float | None = None

    def latency(self, ms: float) -> None:
        key = f"{ms:.3g}"
        self.hist[key] = self.hist.get(key, 0) + 1
        self.sum_ms += ms
        self.min_ms = ms if self.min_ms is None else min(self.min_ms, ms)
        self.max_ms = ms if self.max_ms is None else max(self.max_ms, ms)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def merge(total: dict[str, Any], s: SliceStats) -> None:
    """Add a slice's statistics into the run's (a JSON dict in ctx.state)."""
    for k in ("requests", "ok", "bytes"):
        total[k] = total.get(k, 0) + getattr(s, k)
    total["sum_ms"] = total.get("sum_ms", 0.0) + s.sum_ms
    for k in ("errors", "status", "hist"):
        d = total.setdefault(k, {})
        for key, n in getattr(s, k).items():
            d[key] = d.get(key, 0) + n
    if s.min_ms is not None:
        total["min_ms"] = s.min_ms if total.get("min_ms") is None else min(total["min_ms"], s.min_ms)
        total["max_ms"] = s.max_ms if total.get("max_ms") is None else max(total["max_ms"], s.max_ms)


def percentiles(
    hist: dict[str, int], qs: tuple[float, ...], lo: float | None = None, hi: float | None = None
) -> dict[str, float]:
    """Nearest-rank percentiles (ms) of a latency histogram, within the latencies' ``lo`` and ``hi`` when given:
    the histogram holds them at 3 significant digits, so a p99 of 106 came above a max of 105.715."""
    items = sorted((float(k), n) for k, n in hist.items())
    count = sum(n for _, n in items)
    out: dict[str, float] = {}
    for q in qs:
        if not count:
            break
        rank, seen = max(1, math.ceil(q / 100 * count)), 0
        for value, n in items:
            seen += n
            if seen >= rank:
                out[f"p{q:g}"] = min(max(value, lo if lo is not None else value), hi if hi is not None else value)
                break
    return out


BODY_CHUNK = 1 << 16
"""Bytes of a response body read at a time: a body is counted and dropped, never held whole (one request to
a server streaming without end held 1.2 GB)."""


async def discard(reader: asyncio.StreamReader, count: int | None) -> int:
    """Read and drop ``count`` bytes (to the end of the stream when None), BODY_CHUNK at a time; how many.
    IncompleteReadError when the stream ends before ``count``."""
    n = 0
    while count is None or n < count:
        chunk = await reader.read(BODY_CHUNK if count is None else min(BODY_CHUNK, count - n))
        if not chunk:
            if count is None:
                return n
            raise asyncio.IncompleteReadError(b"", count)
        n += len(chunk)
    return n


class Closed(Exception):
    """The server closed the connection before a whole response came."""


class Protocol(Exception):
    """The response is not HTTP/1.x as this client reads it."""


class Connection:
    """One kept-alive HTTP/1.1 connection to the target."""

    def __init__(self, addr: str, port: int, tls: ssl.SSLContext | None, server_name: str) -> None:
        self.addr, self.port, self.tls, self.server_name = addr, port, tls, server_name
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = False

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.addr, self.port, ssl=self.tls, server_hostname=self.server_name if self.tls else None, limit=1 << 20
        )
        self.used = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes, head: bool, interim: int = 0) -> tuple[int, int]:
        """Send ``raw``, read the response; (status, body bytes). ``interim``: 1xx responses read before."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        reader = self.reader
        self.writer.write(raw)
        await self.writer.drain()
        line = await reader.readline()
        if not line:
            raise Closed("closed before the status line")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise Protocol(f"bad status line {line[:40]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = close = False
        size = 0
        while True:
            h = await reader.readline()
            size += len(h)
            if not h:
                raise Closed("closed inside the headers")
            if size > MAX_HEADER_BYTES:
                raise Protocol("headers over 64 KiB")
            if h in (b"\r\n", b"\n"):
                break
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if status < 200 and status != 101:
            if interim >= MAX_INTERIM:  # each one a frame deeper: a server sending them without end was a
                raise Protocol(f"more than {MAX_INTERIM} interim responses")  # RecursionError, as an error kind
            return await self.request(
                b"", head, interim + 1
            )  # an interim response (100 Continue): the real one follows
        n = 0
        if head or status in (204, 304):
            pass
        elif chunked:
            while True:
                sz = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if sz == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                if sz < 0:
                    raise Protocol(f"negative chunk size {sz}")
                await discard(reader, sz + 2)  # the chunk and its CRLF
                n += sz
        elif length is not None:
            if length < 0:
                raise Protocol(f"negative Content-Length {length}")
            n = await discard(reader, length)
        else:
            n = await discard(reader, None)
            close = True
        self.used = True
        if close:
            self.close()
        return status, n


TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
"""What stays as it is in the request target: a space or a non-ASCII letter in the url is percent-encoded (UTF-8),
as a browser or curl sends it; sent raw, "GET /a b HTTP/1.1" is no request line, and every request was a 400."""


def build_request(p: LoadTestParams) -> bytes:
    """The bytes of every request of the run. Credentials in the url (``http://user:pw@host/``) are sent as
    basic authentication, as curl, a browser or any HTTP library sends them, unless ``headers`` has an
    Authorization of its own: dropped, every request of a run against a protected endpoint was a 401."""
    u = urlsplit(p.url)
    target = quote((u.path or "/") + (f"?{u.query}" if u.query else ""), safe=TARGET_SAFE)
    body = (p.body or "").encode()
    given = {k.lower() for k in p.headers}
    lines = [f"{p.method} {target} HTTP/1.1"]
    if "host" not in given:  # a Host of the user's (a virtual host on this machine) replaces it: two are a 400
        lines.append(f"Host: {u.netloc.rsplit('@', 1)[-1]}")
    if "user-agent" not in given:
        lines.append("User-Agent: outlast-load-test")
    if "accept" not in given:
        lines.append("Accept: */*")
    if u.username is not None and "authorization" not in given:
        user_pass = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        lines.append(f"Authorization: Basic {base64.b64encode(user_pass).decode()}")
    lines += [f"{k}: {v}" for k, v in p.headers.items() if k.lower() != "content-length"]
    if body or p.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


def _kind(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, Closed | asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError):
        return "closed"
    if isinstance(e, Protocol | ValueError):
        return "protocol"
    if isinstance(e, ssl.SSLError):
        return "tls"
    if isinstance(e, OSError):
        return "connect"
    return type(e).__name__


def _scheduled(p: LoadTestParams, offset: float, length: float) -> tuple[int, int]:
    """With a rate: the run's requests n due within the slice that starts ``offset`` seconds into the run
    (n / rate in [offset, offset + length)), as (first n, how many). The schedule is the run's, not each
    slice's: a slice of its own (request 0 at its start, its share rounded up) sent 2 requests each half
    second at rate=3, and at rate=1 in 1 s slices every request at once, the slices back to back."""
    assert p.rate
    first = math.ceil(offset * p.rate - 1e-9)
    return first, max(0, math.ceil((offset + length) * p.rate - 1e-9) - first)


async def run_slice(
    p: LoadTestParams, addr: str, length: float, budget: int | None, offset: float = 0.0
) -> tuple[SliceStats, float]:
    """One slice: at most ``budget`` requests within ``length`` seconds (by the run's schedule with a rate,
    the slice ``offset`` seconds into it, lasting ``length`` however early its requests end); (stats, s)."""
    host, port = _host_port(p.url)
    tls = ssl.create_default_context() if urlsplit(p.url).scheme == "https" else None
    raw, head = build_request(p), p.method == "HEAD"
    stats = SliceStats()
    start = time.monotonic()
    end = start + length
    issued = 0
    first, due = _scheduled(p, offset, length) if p.rate else (0, None)
    limit = min(x for x in (budget, due) if x is not None) if (budget is not None or due is not None) else None

    async def worker() -> None:
        nonlocal issued
        conn = Connection(addr, port, tls, host)
        try:
            while limit is None or issued < limit:
                if not p.rate and time.monotonic() >= end:
                    break
                k, issued = issued, issued + 1  # the slot is taken before waiting for it
                if p.rate:
                    await asyncio.sleep(max(0.0, start + (first + k) / p.rate - offset - time.monotonic()))
                stats.requests += 1
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(p.timeout):
                        try:
                            status, n = await conn.request(raw, head)
                        except (Closed, ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
                            if not conn.used:
                                raise
                            conn.close()  # the server closed a kept-alive connection: once more on a new one
                            status, n = await conn.request(raw, head)
                except Exception as e:  # every failure of one request is counted by kind, never fatal
                    conn.close()
                    stats.error(_kind(e))
                    continue
                stats.latency((time.perf_counter() - t0) * 1000)
                stats.status[str(status)] = stats.status.get(str(status), 0) + 1
                stats.bytes += n
                if status >= 400:
                    stats.error(f"http_{status // 100}xx")
                else:
                    stats.ok += 1
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(p.concurrency)))
    if p.rate and (budget is None or issued < budget):
        await asyncio.sleep(max(0.0, end - time.monotonic()))  # the schedule's time: the next slice starts on it
    return stats, time.monotonic() - start


async def _target(p: LoadTestParams) -> str:
    """The address to connect to, checked again now (a name may resolve elsewhere than at submit)."""
    addrs = await asyncio.to_thread(resolve, p.url)
    if not p.allow_remote:
        refusal = await asyncio.to_thread(not_loopback, p.url)
        if refusal:
            raise ValueError(refusal)
    return await _reachable(addrs, _host_port(p.url)[1], p.timeout)


async def _reachable(addrs: list[str], port: int, timeout: float) -> str:
    """The first of ``addrs`` that takes a connection, as curl tries each address of a name (the last one
    untried: when it does not take one either, every request says so). ``localhost`` is ::1 first on most
    machines, and most development servers listen on 127.0.0.1 only: every request went to ::1, and the
    whole run was "refused"."""
    for addr in addrs[:-1]:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(addr, port)
        except (OSError, TimeoutError):
            continue
        writer.close()
        return addr
    return addrs[-1]


@operation("load_testing", params=LoadTestParams, description="a bounded HTTP load run with latency percentiles")
async def load_test(ctx: OperationContext, p: LoadTestParams) -> dict:
    """Run the slices not yet done; the result has requests/s, latency percentiles and errors by kind."""
    addr = await _target(p)
    total = ctx.state.setdefault("total", {})
    per_slice = ctx.state.setdefault("slices", [])
    ctx.progress(total=p.slices, step="loading")
    async for i in ctx.items(range(p.slices), key=lambda i: f"slice-{i}"):
        length = min(p.slice_seconds, p.duration - i * p.slice_seconds)
        budget = None if p.requests is None else p.requests - total.get("requests", 0)
        if budget == 0:
            continue  # the request budget is spent: the slices left send nothing
        if total.get("seconds", 0.0) >= p.duration + p.timeout:
            # Each slice waits for its requests in flight: against a server that never answers, every slice
            # lasted `timeout`, and a 60 s run with the longest timeout took 10 hours. A run later than
            # one timeout past its duration sends no more slices (said in the log and the result).
            if not ctx.state.get("late"):
                ctx.log.warning(
                    f"{total['seconds']:.1f} s spent of a {p.duration:g} s run (requests waited up to their "
                    f"timeout, {p.timeout:g} s): the slices left send nothing"
                )
            ctx.state["late"] = ctx.state.get("late", 0) + 1
            continue
        stats, took = await run_slice(p, addr, length, budget, i * p.slice_seconds)
        merge(total, stats)
        total["seconds"] = total.get("seconds", 0.0) + took
        pcts = percentiles(stats.hist, (50, 99), stats.min_ms, stats.max_ms)
        per_slice.append(
            [i, stats.requests, sum(stats.errors.values()), round(took, 4), pcts.get("p50"), pcts.get("p99")]
        )
        ctx.step = f"slice {i + 1}/{p.slices}"
        ctx.progress(requests=total["requests"], rps=round(stats.requests / took, 1) if took else 0.0)
        await ctx.checkpoint()  # taken when this slice counts as done
    out = summary(p, total, per_slice)
    if ctx.state.get("late"):
        out["slices_not_sent"] = ctx.state["late"]
    return out


def summary(p: LoadTestParams, total: dict[str, Any], timeline: list[list[Any]]) -> dict[str, Any]:
    """The run's statistics; ``timeline`` has a line per slice that sent requests:
    [slice, requests, errors, seconds, p50 ms, p99 ms]."""
    n, secs = total.get("requests", 0), total.get("seconds", 0.0)
    timed = sum(total.get("hist", {}).values())
    latency = {"min": total.get("min_ms"), "mean": round(total["sum_ms"] / timed, 3) if timed else None}
    latency |= percentiles(total.get("hist", {}), (50, 90, 95, 99), total.get("min_ms"), total.get("max_ms"))
    latency["max"] = total.get("max_ms")
    return {
        "url": p.url,
        "requests": n,
        "ok": total.get("ok", 0),
        "errors": dict(sorted(total.get("errors", {}).items())),
        "status": dict(sorted(total.get("status", {}).items())),
        "bytes": total.get("bytes", 0),
        "seconds": round(secs, 3),
        "requests_per_second": round(n / secs, 1) if secs else 0.0,
        "target_rate": p.rate,
        "latency_ms": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in latency.items()},
        "slices": len(timeline),
        "timeline": timeline,
    }
