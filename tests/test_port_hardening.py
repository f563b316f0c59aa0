"""The public port under hostile clients (docs/SECURITY.md, "The public port"): tokens, logs,
idle and start deadlines, model ids. Each test reproduces an attack against a real server on
loopback and checks it now does no harm, while a normal client is still served."""

import asyncio
import json
import logging
import subprocess
import sys
import time

import aiohttp
import pytest
import websockets

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from tests.helpers import ROOT, SAMPLE_TEXT, WorkerThread, requires_model

pytestmark = requires_model
SECRET = "s3cret-token"


@pytest.fixture(scope="module")
def api_only_worker(tiny_model):
    """API_TOKEN set, WS_AUTH_TOKEN not; short idle and start deadlines."""
    settings = Settings(
        model="tests/assets/tiny_parakeet.nemo",
        api_token=SECRET,
        warmup=False,
        ws_idle_timeout_s=2.0,
        ws_start_timeout_s=1.0,
    )
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=True)
    yield w
    w.stop()


async def status_of_upgrade(url: str, headers=None) -> int:
    try:
        async with websockets.connect(url, additional_headers=headers or {}) as ws:
            await ws.recv()
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def test_api_token_alone_protects_the_websocket_too(api_only_worker):
    w = api_only_worker
    assert asyncio.run(status_of_upgrade(w.url + "/")) == 401
    assert asyncio.run(status_of_upgrade(f"{w.url}/?token={SECRET}")) == 101
    assert asyncio.run(status_of_upgrade(w.url + "/", {"Authorization": f"Bearer {SECRET}"})) == 101


def test_one_token_per_request_repeated_guesses_are_refused(api_only_worker):
    w = api_only_worker
    guesses = "&".join(f"token=g{k}" for k in range(50)) + f"&token={SECRET}"
    assert asyncio.run(status_of_upgrade(f"{w.url}/?{guesses}")) == 401

    async def models(query):
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{w.port}/v1/models?{query}") as r:
            return r.status, await r.json()

    assert asyncio.run(models(guesses))[0] == 401
    status, body = asyncio.run(models(f"token={SECRET}"))
    assert status == 200
    # the model's id, never the path of its file on this machine
    assert [m["id"] for m in body["data"]] == ["tiny_parakeet"]


def test_an_encoded_token_name_is_honoured_and_never_logged(api_only_worker, caplog):
    w = api_only_worker
    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(status_of_upgrade(f"{w.url}/?%74oken={SECRET}")) == 101
        time.sleep(0.2)  # the request log is written when the response ends
    assert any("GET /" in r.getMessage() for r in caplog.records if r.name.startswith("websocket"))
    # (the test's own client library logs what it sends: only the server's records count)
    assert not any(SECRET in r.getMessage() for r in caplog.records if not r.name.startswith("websockets."))


def test_junk_frames_do_not_hold_a_session_and_a_session_that_never_starts_is_closed(api_only_worker):
    w = api_only_worker

    async def junk_sender():
        async with websockets.connect(f"{w.url}/?token={SECRET}") as ws:
            await ws.recv()  # welcome
            await ws.send(json.dumps({"action": "start"}))
            assert json.loads(await ws.recv())["type"] == "started"
            await ws.send(json.dumps({"action": "stop"}))
            assert json.loads(await ws.recv())["type"] == "done"
            t0 = time.monotonic()
            errors = []
            try:
                while time.monotonic() - t0 < 10:
                    await ws.send("junk")  # invalid JSON every 0.3 s: not activity
                    errors.append(json.loads(await ws.recv()).get("code"))
                    await asyncio.sleep(0.3)
            except websockets.ConnectionClosed as closed:
                return time.monotonic() - t0, errors, closed.rcvd
            return time.monotonic() - t0, errors, None

    took, errors, close = asyncio.run(junk_sender())
    assert took < 4.0, took  # WS_IDLE_TIMEOUT_S=2 holds despite the junk
    assert set(errors) == {"invalid_json"} and close.code == 1000 and close.reason == "idle timeout", (errors, close)

    async def never_starts():
        async with websockets.connect(f"{w.url}/?token={SECRET}") as ws:
            t0 = time.monotonic()
            msgs = []
            try:
                async for raw in ws:
                    msgs.append(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            return time.monotonic() - t0, msgs

    took, msgs = asyncio.run(never_starts())
    assert took < 2.5 and msgs[-1]["code"] == "idle_timeout" and "no stream started" in msgs[-1]["message"], msgs


def test_a_normal_client_is_served_meanwhile(api_only_worker, speech_files):
    import openai

    w = api_only_worker
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{w.port}/v1", api_key=SECRET, max_retries=0)
    with open(speech_files["wav"], "rb") as f:
        out = client.audio.transcriptions.with_raw_response.create(model="parakeet", file=f)
    assert out.headers["openai-model"] == "tiny_parakeet"
    import jiwer

    assert jiwer.wer(SAMPLE_TEXT, out.parse().text) <= 0.15


def test_log_level_is_honoured_after_the_runpod_sdk_configured_logging():
    code = (
        "import runpod, logging\n"
        "from parakeet_worker.config.settings import Settings\n"
        "from parakeet_worker.config.logs import configure_logging\n"
        "configure_logging(Settings(log_level='WARNING'))\n"
        "print(logging.getLogger().getEffectiveLevel())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == str(logging.WARNING), out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# without a token: other web sites' pages and foreign Host names are refused
@pytest.fixture(scope="module")
def open_worker(tiny_model):
    settings = Settings(model="tiny", warmup=False, allowed_origins=("https://app.example",))
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=True)
    yield w
    w.stop()


def http(port: int, method: str, path: str, headers=None, data=None):
    async def go():
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, f"http://127.0.0.1:{port}{path}", headers=headers or {}, data=data) as r,
        ):
            return r.status, await r.text()

    return asyncio.run(go())


def test_a_foreign_origin_is_refused_for_the_websocket_and_the_post(open_worker, speech_files):
    w = open_worker
    assert asyncio.run(status_of_upgrade(w.url + "/", {"Origin": "https://evil.example"})) == 403
    form = aiohttp.FormData()
    form.add_field("file", open(speech_files["wav"], "rb").read(), filename="a.wav")
    form.add_field("model", "parakeet")
    status, body = http(w.port, "POST", "/v1/audio/transcriptions", {"Origin": "https://evil.example"}, form)
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
    # the page's own origin, an allowed one, and clients that send no Origin (not browsers) are served
    assert asyncio.run(status_of_upgrade(w.url + "/", {"Origin": f"http://127.0.0.1:{w.port}"})) == 101
    assert asyncio.run(status_of_upgrade(w.url + "/", {"Origin": "https://app.example"})) == 101
    assert asyncio.run(status_of_upgrade(w.url + "/")) == 101


def test_foreign_host_names_are_refused_but_health_checks_answer(open_worker):
    w = open_worker
    for path in ("/v1/models", "/metrics", "/"):
        status, _ = http(w.port, "GET", path, {"Host": "rebound.evil.example"})
        assert status == 421, path
    assert http(w.port, "GET", "/ping", {"Host": "10.1.2.3:8765"})[0] == 200
    assert http(w.port, "GET", "/v1/models", {"Host": f"localhost:{w.port}"})[0] == 200


def test_the_page_is_served_with_a_csp_that_names_its_own_script_and_socket(open_worker):
    import base64
    import hashlib
    import re

    w = open_worker

    async def get():
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{w.port}/") as r:
            return r.headers, await r.text()

    headers, html = asyncio.run(get())
    csp = headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", html, flags=re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp and "'unsafe-inline'" not in csp
    assert f"connect-src 'self' ws://127.0.0.1:{w.port} wss://127.0.0.1:{w.port}" in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"


# ---------------------------------------------------------------------------------------------
# connections: deadlines and a cap, below the routes
@pytest.fixture(scope="module")
def tight_worker(tiny_model):
    settings = Settings(model="tiny", warmup=False, header_timeout_s=1.0, keepalive_timeout_s=1.5, max_connections=20)
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=True)
    yield w
    w.stop()


def test_silent_and_slow_header_sockets_are_closed_and_the_cap_answers_fast(tight_worker):
    import socket

    w = tight_worker

    def closed_within(sock, seconds) -> bool:
        sock.settimeout(seconds)
        try:
            return sock.recv(1024) == b""
        except (TimeoutError, ConnectionResetError):
            return False

    silent = socket.create_connection(("127.0.0.1", w.port))
    slow = socket.create_connection(("127.0.0.1", w.port))
    slow.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
    assert http(w.port, "GET", "/v1/models")[0] == 200  # a normal client is served while they hang on
    t0 = time.monotonic()
    assert closed_within(silent, 4.0) and closed_within(slow, 4.0)
    assert time.monotonic() - t0 < 4.0
    # over the cap: an immediate 503, not a hang and not a dead port; the held sockets die by deadline
    held = [socket.create_connection(("127.0.0.1", w.port)) for _ in range(20)]
    extra = socket.create_connection(("127.0.0.1", w.port))
    extra.settimeout(2.0)
    assert extra.recv(1024).startswith(b"HTTP/1.1 503")
    for s in held + [silent, slow, extra]:
        s.close()
    time.sleep(0.5)
    assert http(w.port, "GET", "/ping")[0] == 200  # a normal client is served again


def test_an_idle_keepalive_connection_is_closed_after_its_response(tight_worker):
    import socket

    w = tight_worker
    sock = socket.create_connection(("127.0.0.1", w.port))
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    assert sock.recv(1024) == b""  # closed by the server while idle
    assert time.monotonic() - t0 < 4.0
    sock.close()


# ---------------------------------------------------------------------------------------------
# uploads: bounded in time, number, bytes and disk; malformed forms are the client's 400
@pytest.fixture(scope="module")
def upload_worker(tiny_model):
    settings = Settings(
        model="tiny",
        warmup=False,
        upload_stall_s=1.0,
        max_uploads=2,
        max_audio_bytes=1_000_000,
        spool_budget_bytes=1_500_000,
    )
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=True)
    yield w
    w.stop()


def raw_post(port: int, head_extra: bytes, body: bytes, *, wait: float = 10.0, close_after_send: bool = False):
    """POST /v1/audio/transcriptions with a hand-made body; (status, body text) or None if the
    server closed without an answer."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head_extra + b"\r\n" + body)
    if close_after_send:
        sock.close()
        return None
    sock.settimeout(wait)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if not data:
        return None
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1].decode(errors="replace")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def form(boundary: bytes, payload: bytes, closing: bool = True) -> bytes:
    body = (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + payload
        + b"\r\n"
    )
    return body + (b"--" + boundary + b"--\r\n" if closing else b"")


@pytest.mark.parametrize(
    "case",
    [
        "no_boundary",
        "empty_boundary",
        "long_boundary",
        "wrong_boundary",
        "no_closing_boundary",
        "bad_transfer_encoding",
        "nul_in_name",
    ],
)
def test_malformed_forms_are_the_clients_400_in_openai_shape(upload_worker, case):
    w = upload_worker
    b = b"XyZ"
    body = form(b, b"RIFF....")
    ctype = b"multipart/form-data; boundary=XyZ"
    if case == "no_boundary":
        ctype = b"multipart/form-data"
    elif case == "empty_boundary":
        ctype = b"multipart/form-data; boundary="
    elif case == "long_boundary":
        ctype = b"multipart/form-data; boundary=" + b"b" * 80
    elif case == "wrong_boundary":
        ctype = b"multipart/form-data; boundary=other"
    elif case == "no_closing_boundary":
        body = form(b, b"RIFF....", closing=False)
    elif case == "bad_transfer_encoding":
        body = body.replace(b"\r\n\r\nRIFF", b"\r\nContent-Transfer-Encoding: rot13\r\n\r\nRIFF")
    elif case == "nul_in_name":
        body = body.replace(b"a.wav", b"a\x00.wav")
    status, text = raw_post(w.port, b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n" % len(body), body)
    assert 400 <= status < 500, (status, text)
    assert json.loads(text)["error"]["type"] == "invalid_request_error"


def test_a_stalled_upload_times_out_and_uploads_are_bounded_in_number(upload_worker):
    import socket

    w = upload_worker
    head = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 500000\r\n\r\n"
    )
    stalled = []
    for _ in range(2):  # two uploads that stop sending: they hold both upload slots
        s = socket.create_connection(("127.0.0.1", w.port))
        s.sendall(head + b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc')
        stalled.append(s)
    time.sleep(0.3)
    body = form(b"XyZ", b"x" * 100)
    status, text = raw_post(
        w.port, b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: %d\r\n" % len(body), body
    )
    assert status == 429 and json.loads(text)["error"]["code"] == "too_many_uploads"
    for s in stalled:  # each answered 408 after UPLOAD_STALL_S without data, and closed
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 408")
        s.close()


def test_bytes_before_the_first_part_count_and_the_spool_budget_holds(upload_worker):
    w = upload_worker
    # 3 MB of preamble, chunked (no Content-Length): refused once past the limit, not read to the end
    preamble = b"p" * 3_000_000
    body = preamble + b"\r\n" + form(b"XyZ", b"x")
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    status, text = raw_post(
        w.port, b"Content-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n", chunked
    )
    assert status in (400, 413) and "ppp" not in text, (status, text[:300])  # refused early, nothing echoed
    # an upload holding 900 kB on disk (stalled before its end) and a second one of 900 kB pass
    # the 1.5 MB spool budget together: the second is refused with 503
    import socket

    held = socket.create_connection(("127.0.0.1", w.port))
    held.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 990000\r\n\r\n"
        + form(b"XyZ", b"y" * 900_000, closing=False)[:-2]
    )
    time.sleep(0.3)
    body = form(b"XyZ", b"z" * 900_000)
    status, text = raw_post(
        w.port, b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: %d\r\n" % len(body), body
    )
    held.close()
    assert status == 503 and json.loads(text)["error"]["code"] == "server_busy", (status, text[:300])


def test_work_of_a_client_that_went_away_is_cancelled_and_counted_as_such(
    upload_worker, speech_files, monkeypatch, caplog
):
    import glob
    import socket
    import tempfile as tf

    w = upload_worker
    started, cancelled = [], []

    async def slow_transcribe(samples, **kwargs):  # a long transcription: the client leaves during it
        started.append(time.monotonic())
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(time.monotonic())
            raise

    monkeypatch.setattr(w.engine, "transcribe", slow_transcribe)
    audio = open(speech_files["wav"], "rb").read()
    body = b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nparakeet\r\n' + form(b"XyZ", audio)
    sock = socket.create_connection(("127.0.0.1", w.port))
    sock.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    deadline = time.monotonic() + 20
    while not started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with caplog.at_level(logging.INFO, logger="asr.events"):
        sock.close()
        while not cancelled:
            assert time.monotonic() < deadline, "the abandoned request's work was not cancelled"
            time.sleep(0.05)
        time.sleep(0.3)
    assert cancelled[0] - started[0] < 60
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "asr.events"]
    assert any(e.get("kind") == "openai" and e["outcome"] == "cancelled" for e in events), events
    assert not glob.glob(f"{tf.gettempdir()}/openai-upload-*")  # its spooled upload is gone


def test_a_malformed_request_head_is_one_log_line_not_a_traceback(upload_worker, caplog):
    import socket

    w = upload_worker
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        s = socket.create_connection(("127.0.0.1", w.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Without Colon\r\n\r\n")
        s.settimeout(5)
        assert s.recv(1024).split(b" ")[1] == b"400"
        s.close()
        time.sleep(0.2)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.exc_info is None and r.levelno <= logging.INFO for r in records), records


def test_a_drip_fed_upload_is_refused_by_its_average_rate(tiny_model):
    import socket

    settings = Settings(model="tiny", warmup=False, upload_stall_s=1.0, upload_min_rate=2000.0)
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=True)
    try:
        s = socket.create_connection(("127.0.0.1", w.port))
        s.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n\r\n"
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        )
        s.settimeout(0.1)
        t0, answer = time.monotonic(), b""
        while not answer and time.monotonic() - t0 < 10:
            s.sendall(b"x" * 100)  # 100 bytes every 0.3 s: no read ever stalls 1 s
            try:
                answer = s.recv(65536)
            except TimeoutError:
                pass
            time.sleep(0.2)
        assert answer.split(b" ")[1] == b"408" and time.monotonic() - t0 < 5, answer[:200]
        s.close()
    finally:
        w.stop()
