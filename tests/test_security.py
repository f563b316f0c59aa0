"""Issue 13's findings, each with the test that proves it closed (docs/SECURITY.md maps them).

Traffic goes only to loopback test servers. Hostile URLs that name any other address are judged
by the policy function alone, never connected to; disguised loopback URLs are sent to a loopback
server that must see no request at all.
"""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from aiohttp import web

from parakeet_worker.audio import decode as audio_utils
from parakeet_worker.audio import fetch, url_policy
from parakeet_worker.audio.budget import DecodeBudget
from parakeet_worker.audio.decode import decode_audio, decode_audio_async
from parakeet_worker.audio.fetch import DownloadPolicy
from parakeet_worker.audio.formats import DEMUXERS
from parakeet_worker.config.errors import ASRError
from tests.helpers import ROOT, write_wav
from tools.test_model import synth


def code_of(fn, *a, **k):
    with pytest.raises(ASRError) as ei:
        fn(*a, **k)
    return ei.value.code


async def acode_of(coro):
    with pytest.raises(ASRError) as ei:
        await coro
    return ei.value


# ------------------------------------------------------------------ 1. URL policy
class Recorder:
    """A loopback HTTP server that counts every request it receives."""

    def __init__(self, body=b"ID3audio"):
        self.body, self.hits = body, []

    async def start(self, extra_routes=()):
        async def any_path(request):
            self.hits.append(request.path)
            return web.Response(body=self.body)

        app = web.Application()
        app.add_routes([*extra_routes, web.get("/{tail:.*}", any_path)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        await self.runner.cleanup()


# Each form is 127.0.0.1 (or another loopback address) once normalised the way an HTTP client or
# getaddrinfo does it; none may be fetched.
DISGUISED_LOOPBACK = [
    "http://127。0。0。1:{port}/a.mp3",  # ideographic full stops
    "http://127．0．0．1:{port}/a.mp3",  # fullwidth full stops
    "http://127｡0｡0｡1:{port}/a.mp3",  # halfwidth ideographic full stops
    "http://１２７.０.０.１:{port}/a.mp3",  # fullwidth digits
    "http://①②⑦.0.0.1:{port}/a.mp3",  # circled digits
    "http://2130706433:{port}/a.mp3",  # one decimal number
    "http://0x7f.1:{port}/a.mp3",  # hexadecimal, short form
    "http://017700000001:{port}/a.mp3",  # octal
    "http://127.1:{port}/a.mp3",  # short dotted form
    "http://0:{port}/a.mp3",  # "0" connects to this host
    "http://[::ffff:127.0.0.1]:{port}/a.mp3",  # IPv4-mapped
    "http://[::ffff:0:127.0.0.1]:{port}/a.mp3",  # IPv4-translated
    "http://[::127.0.0.1]:{port}/a.mp3",  # IPv4-compatible
    "http://[0:0:0:0:0:0:0:1]:{port}/a.mp3",
    "http://LOCALHOST.:{port}/a.mp3",
    "http://localhost:{port}/a.mp3",
    "http://a.localhost:{port}/a.mp3",
]


@pytest.mark.parametrize("url", DISGUISED_LOOPBACK)
def test_disguised_loopback_is_refused_by_the_policy_and_never_connected_to(url):
    async def main():
        srv = await Recorder().start()
        try:
            u = url.format(port=srv.port)
            assert code_of(url_policy.check_url, u) == "forbidden_url"
            err = await acode_of(fetch.download(u, DownloadPolicy(1 << 20, 5, 3)))
            assert err.code == "forbidden_url", err
            assert "127.0.0.1" not in err.message and "::1" not in err.message  # the rule, not the address
            assert srv.hits == []  # refused before any connection
        finally:
            await srv.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://169。254。169。254/latest/meta-data/",
        "http://[::169.254.169.254]/",  # IPv4-compatible form of the metadata address
        "http://[::ffff:0:a9fe:a9fe]/",  # IPv4-translated form of it
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of it
        "http://[64:ff9b:1::8.8.8.8]/",  # local-use NAT64
        "http://[::8.8.8.8]/",  # IPv4-compatible: deprecated, never public
        "http://[::ffff:0:8.8.8.8]/",  # IPv4-translated: never public
        "http://[fe80::1%25eth0]/",  # zone id
        "http://１０.０.０.１/",
        "http://10｡1｡2｡3/",
        "http://192.168.1.1./",
        "http://100.64.0.1/",
        "http://metadata.google.internal/",
        "http://METADATA/",
        "http://printer.local/",
        "http://0x0a000001/",
        "http://167772161/",
    ],
)
def test_hostile_non_loopback_urls_are_refused_by_the_policy_function(url):
    assert code_of(url_policy.check_url, url) == "forbidden_url"


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::127.0.0.1", False),
        ("::8.8.8.8", False),
        ("::ffff:0:8.8.8.8", False),
        ("::ffff:0:7f00:1", False),
        ("::ffff:127.0.0.1", False),
        ("64:ff9b:1::808:808", False),
        ("2002:7f00:1::1", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
    ],
)
def test_address_classification(address, public):
    assert url_policy.address_is_public(address) is public


def test_refusals_name_the_rule_not_the_resolved_address():
    with pytest.raises(ASRError) as ei:
        url_policy.check_url("http://example.com/a.mp3", ["93.184.215.14", "10.0.0.7"])
    assert ei.value.code == "forbidden_url" and "10.0.0.7" not in ei.value.message
    assert "not public" in ei.value.message


def test_the_policy_judges_the_encoded_host_the_client_uses():
    t = url_policy.check_url("https://münchen.example/a.mp3")
    assert t.host == "xn--mnchen-3ya.example" and str(t.url).startswith("https://xn--mnchen-3ya.example/")
    assert url_policy.check_url("http://１２７.０.０.１:9/a", allowed_hosts=("127.0.0.1:9",)).exempt


def test_an_allowed_loopback_host_is_fetched_and_disguised_redirects_are_refused():
    async def main():
        other = await Recorder().start()
        hop = f"http://１２７.０.０.１:{other.port}/a.mp3"  # a redirect in disguise, to another port

        def redirect(to):
            async def handle(_):
                raise web.HTTPFound(to)

            return handle

        srv = await Recorder(b"ID3 real audio bytes").start(
            [web.get("/hop", redirect(hop)), web.get("/hop2", redirect(f"http://[::ffff:127.0.0.1]:{other.port}/"))]
        )
        policy = DownloadPolicy(1 << 20, 5, 3, allowed_hosts=(f"127.0.0.1:{srv.port}",))
        try:
            path = await fetch.download(f"http://127.0.0.1:{srv.port}/a.mp3", policy)
            assert path.read_bytes() == b"ID3 real audio bytes"
            path.unlink()
            for route in ("hop", "hop2"):
                err = await acode_of(fetch.download(f"http://127.0.0.1:{srv.port}/{route}", policy))
                assert err.code == "forbidden_url", err
            assert other.hits == []
        finally:
            await srv.stop()
            await other.stop()

    asyncio.run(main())


def test_connect_time_gate_holds_even_if_the_url_check_were_fooled(monkeypatch):
    """Simulate a future parser bug: check_url lets everything through. The resolver (for names)
    and the socket factory (for IP literals, which aiohttp never resolves) still refuse, so the
    loopback server sees nothing."""

    def fooled(url, addresses=None, **kw):
        t = url_policy.parse_url(url)
        return url_policy.Target(t.url, t.host, t.port, exempt=False)

    monkeypatch.setattr(fetch, "check_url", fooled)

    async def main():
        srv = await Recorder().start()
        try:
            for url in (
                f"http://127.0.0.1:{srv.port}/a",
                f"http://localhost:{srv.port}/a",
                f"http://[::ffff:127.0.0.1]:{srv.port}/a",
            ):
                err = await acode_of(fetch.download(url, DownloadPolicy(1 << 20, 5, 3)))
                assert err.code == "forbidden_url", (url, err)
            assert srv.hits == []
        finally:
            await srv.stop()

    asyncio.run(main())


# ------------------------------------------------------------------ 2. ffmpeg reads only audio
def _hls(target):
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n".encode()


def _hostile_containers(target):
    return {
        "hls": _hls(target),
        "dash": (
            f'<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet>'
            f'<Representation id="1" bandwidth="1"><BaseURL>{target}</BaseURL></Representation>'
            f"</AdaptationSet></Period></MPD>"
        ).encode(),
        "concat": f"ffconcat version 1.0\nfile '{target}'\n".encode(),
        "sdp": b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 9 RTP/AVP 0\n",
        "image_sequence": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        "hls_behind_id3": b"ID3\x04\x00\x00\x00\x00\x00\x00" + _hls(target),  # sniffed as MP3, read as MP3
    }


def test_the_hls_probe_is_a_real_exploit_for_plain_ffmpeg(speech_files, tmp_path):
    """Guards the test below from passing vacuously: ffmpeg left to probe does read the local file
    an ~90-byte playlist names."""
    playlist = tmp_path / "p"
    playlist.write_bytes(_hls(speech_files["mp3"]))  # 61 bytes + the path
    out = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(playlist),
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "f32le",
            "pipe:1",
        ],
        capture_output=True,
    )
    assert len(out.stdout) > 16000 * 4  # seconds of the named file's audio


@pytest.mark.parametrize("kind", list(_hostile_containers("x")))
def test_playlists_manifests_and_lists_are_never_decoded(speech_files, kind):
    data = _hostile_containers(speech_files["mp3"])[kind]
    with pytest.raises(ASRError) as ei:
        decode_audio(data, 3600)
    assert ei.value.code == ("invalid_audio" if kind == "hls_behind_id3" else "unsupported_format"), ei.value


def test_ffmpeg_gets_an_explicit_demuxer_and_only_the_file_protocol(tmp_path):
    cmd = audio_utils._ffmpeg_command(tmp_path / "x", "mp3", 60)
    assert cmd[cmd.index("-f") + 1] == "mp3" and cmd.index("-f") < cmd.index("-i")
    assert cmd[cmd.index("-protocol_whitelist") + 1] == "file"
    assert set(DEMUXERS.values()) <= {
        "wav",
        "flac",
        "ogg",
        "matroska",
        "mov",
        "mp3",
        "aac",
        "aiff",
        "amr",
        "asf",
    }


# ------------------------------------------------------------------ 3. memory budget
def _flac(path, seconds, rate=192000, layout="7.1", extra=()):
    synth.ffmpeg_lavfi(f"anullsrc=r={rate}:cl={layout}", path, "-t", str(seconds), "-c:a", "flac", *extra)
    return path


def _claim_total_samples(data: bytes, total: int) -> bytes:
    """Rewrite STREAMINFO's 36-bit total-sample count (bytes 18..26: rate, channels, bits, total)."""
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    return data[:18] + packed.to_bytes(8, "big") + data[26:]


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from parakeet_worker.audio import decode as audio_utils
    from parakeet_worker.config.errors import ASRError
    data = open(sys.argv[2], "rb").read()
    audio_utils.decode_audio(open(sys.argv[4], "rb").read(), 60)  # warm imports and allocators
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        result = round(audio_utils.decode_audio(data, float(sys.argv[3])).duration, 1)
    except ASRError as e:
        result = e.code
    print(json.dumps({"result": result, "rise_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
""")


def _peak(path, max_seconds, warm):
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(ROOT), str(path), str(max_seconds), str(warm)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    bomb = _flac(d / "bomb.flac", 60)  # 8 channels at 192 kHz: ~32 KB on disk, 368 MB as float32
    long_bomb = d / "long.flac"
    long_bomb.write_bytes(_claim_total_samples(bomb.read_bytes(), 5 * 3600 * 192000))  # claims 5 h
    piped = d / "piped.flac"  # written to a pipe: STREAMINFO says 0 samples (unknown length)
    piped.write_bytes(
        synth.ffmpeg_lavfi("anullsrc=r=192000:cl=7.1", "pipe:1", "-t", "60", "-c:a", "flac", "-f", "flac")
    )
    warm = write_wav(d / "warm.wav", np.zeros(16000, np.float32))
    return {"bomb": bomb, "long": long_bomb, "piped": piped, "warm": warm}


def test_multichannel_high_rate_bomb_decodes_in_bounded_memory(bombs):
    # before: the whole 8 x 192 kHz file as float32 plus its mono mix (~400 MB rise measured)
    got = _peak(bombs["bomb"], 3600, bombs["warm"])
    assert got["result"] == 60.0 and got["rise_mb"] < 120, got


def test_a_bomb_claiming_hours_is_refused_before_decoding(bombs):
    got = _peak(bombs["long"], 4 * 3600, bombs["warm"])
    assert got["result"] == "audio_too_long" and got["rise_mb"] < 50, got


def test_a_piped_bomb_stops_at_the_duration_limit(bombs):
    got = _peak(bombs["piped"], 20, bombs["warm"])
    assert got["result"] == "audio_too_long" and got["rise_mb"] < 120, got


def test_decode_budget_bounds_concurrent_reservations():
    async def main():
        budget = DecodeBudget(100)
        peak, release = [], asyncio.Event()

        async def job(n):
            async with budget.reserve(n) as granted:
                assert granted == min(n, 100)
                peak.append(budget.used)
                await release.wait()  # held until the test lets go

        tasks = [asyncio.create_task(job(n)) for n in (60, 60, 30, 250, 10, 70)]
        waiter = asyncio.create_task(job(90))
        # the first 60 holds the budget; everyone else, the waiter last, queues behind it
        await _until(lambda: len(budget._waiters) == 6)
        assert budget.used == 60 and peak == [60] and budget._waiters[-1][0] == 90
        waiter.cancel()  # a cancelled waiter must not keep (or leak) a reservation
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled() and len(budget._waiters) == 5
        release.set()
        await asyncio.gather(*tasks)
        assert len(peak) == 6 and max(peak) <= 100 and budget.used == 0 and not budget._waiters

    asyncio.run(main())


@pytest.mark.parametrize("rate,frames", [(16000, 48007), (44100, 132301), (22050, 66149), (8000, 24001)])
def test_budgeted_decodes_fit_their_exact_length(tmp_path, rate, frames):
    """A known-length WAV reserves exactly its size: rounding must never cut its last block."""
    tone = np.sin(np.arange(frames) * 0.05).astype(np.float32) * 0.3
    data = write_wav(tmp_path / "t.wav", tone, rate).read_bytes()
    got = decode_audio(data, 3600, None, DecodeBudget(1 << 30))
    assert got.duration == pytest.approx(frames / rate, abs=0.01)


def test_ffmpeg_output_stops_at_the_budget(speech_files):
    """A decode whose budget holds less than the audio stops early (audio_too_long), with nothing
    read past its buffer."""
    budget = DecodeBudget((1 << 20) + 16000 * 4)  # ffmpeg overhead + one second of samples
    assert code_of(decode_audio, speech_files["mp3"].read_bytes(), 3600, None, budget) == "audio_too_long"
    assert budget.used == 0


# ------------------------------------------------------------------ 4. cancellation cleans up
def _ffmpeg_children():
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if name == "ffmpeg" and int(rest[1]) == os.getpid():
                pids.append(int(entry))
    return pids


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(d))
    return d


async def _until(cond, timeout=20.0):
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_cancelled_download_leaves_no_partial_file(private_tmp):
    async def main():
        release = asyncio.Event()  # the server's handler ends with the test, not 30 s later

        async def slow(request):
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b"\0" * 65536)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 30)
            return resp

        srv = await Recorder().start([web.get("/slow", slow)])
        try:
            task = asyncio.create_task(
                fetch.download(
                    f"http://127.0.0.1:{srv.port}/slow",
                    DownloadPolicy(1 << 30, 60, 3, allowed_hosts=(f"127.0.0.1:{srv.port}",)),
                )
            )
            await _until(lambda: any(p.stat().st_size > 0 for p in private_tmp.iterdir()))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert list(private_tmp.iterdir()) == []
        finally:
            release.set()
            await srv.stop()

    asyncio.run(main())


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.mp3"
    synth.ffmpeg_lavfi(
        "sine=f=300:sample_rate=8000", path, "-t", "1200", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "8k"
    )
    return path


def test_cancelled_decode_kills_ffmpeg_and_removes_its_temp_file(private_tmp, long_mp3):
    async def main():
        task = asyncio.create_task(decode_audio_async(long_mp3.read_bytes(), 3600, None, DecodeBudget(1 << 30)))
        await _until(lambda: _ffmpeg_children() and list(private_tmp.iterdir()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _ffmpeg_children() == []  # killed and reaped, not left running to its timeout
        assert list(private_tmp.iterdir()) == []

    asyncio.run(main())


def test_a_cancelled_job_kills_its_ffmpeg_and_removes_its_temp_file(private_tmp, long_mp3, engine, monkeypatch):
    """The same through the batch handler itself (the local RunPod server has no cancel): the job's
    task is cancelled while ffmpeg decodes its audio."""
    import base64

    import rp_handler

    monkeypatch.setattr(rp_handler, "_engine", engine)
    job = {"id": "cancel-me", "input": {"audio_base64": base64.b64encode(long_mp3.read_bytes()).decode()}}

    async def main():
        task = asyncio.create_task(rp_handler.handler(job))
        await _until(lambda: _ffmpeg_children() and list(private_tmp.iterdir()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _ffmpeg_children() == []
        assert list(private_tmp.iterdir()) == []

    asyncio.run(main())


def test_cancelled_soundfile_decode_stops_and_gives_back_its_budget(bombs):
    async def main():
        budget = DecodeBudget(1 << 30)
        task = asyncio.create_task(decode_audio_async(bombs["bomb"].read_bytes(), 3600, None, budget))
        await _until(lambda: budget.used > 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.used == 0

    asyncio.run(main())


def test_temp_files_are_removed_after_failures_too(private_tmp, speech_files):
    assert code_of(decode_audio, speech_files["mp3"].read_bytes()[:3000], 3600) == "invalid_audio"
    assert list(private_tmp.iterdir()) == []


# ------------------------------------------------------------------ 5. piped FLAC
def test_piped_flac_of_unknown_length_decodes(speech_files, tmp_path):
    # mono 22.05 kHz FLAC, re-encoded to a pipe
    piped = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(speech_files["flac"]),
            "-c:a",
            "flac",
            "-f",
            "flac",
            "pipe:1",
        ],
        capture_output=True,
        check=True,
    ).stdout
    ref = decode_audio(speech_files["flac"].read_bytes(), 3600)
    got = decode_audio(piped, 3600)
    assert got.format == "flac" and got.duration == pytest.approx(ref.duration, abs=0.02)
    assert np.sqrt(np.mean(got.samples**2)) == pytest.approx(np.sqrt(np.mean(ref.samples**2)), rel=0.05)
    assert code_of(decode_audio, piped, 1.0) == "audio_too_long"  # the limit still holds while reading


# ------------------------------------------------------------------ 6. WebSocket
@pytest.fixture(scope="module")
def engine(tiny_model):
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine

    return Engine(Settings(model="tiny", max_batch_size=4, warmup=False), model=tiny_model)


@pytest.mark.parametrize("raw", ["[" * 100_000, '{"a":' * 50_000, "1" * 5000, "\ud800", '{"action": NaN', "[]"])
def test_message_parser_raises_only_protocol_errors(raw):
    from parakeet_worker.serving.live_session import parse_message

    with pytest.raises(ASRError) as ei:
        parse_message(raw)
    assert ei.value.code == "invalid_json"


def test_deeply_nested_json_is_a_recoverable_error_on_a_real_connection(engine):
    import dataclasses

    from websockets.asyncio.client import connect

    from tests.test_streaming import ServerThread

    srv = ServerThread(dataclasses.replace(engine.settings, ws_idle_timeout_s=30.0), engine)
    try:

        async def run():
            async with connect(srv.url, max_size=None) as ws:
                await ws.recv()  # welcome
                replies = []
                for bomb in ("[" * 100_000, '{"a":' * 50_000):
                    await ws.send(bomb)
                    replies.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"action": "start"}))  # the same connection still works
                replies.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"action": "stop"}))
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                return replies

        replies = asyncio.run(run())
        assert [r.get("code") for r in replies[:2]] == ["invalid_json", "invalid_json"]
        assert replies[2]["type"] == "started" and replies[3]["type"] == "done"
    finally:
        srv.stop()


def test_streams_keep_pending_audio_in_a_deque(engine):
    """One-sample frames must not make each decoding step O(frames): cutting a step's frame from a
    backlog of 200k one-sample frames costs about what cutting it from a backlog of one step costs
    (with ``list.pop(0)`` each frame taken would move the whole backlog: ~25x slower here). The
    frames hold the pushed samples, in order. Relative timing, best of several cuts, 4x margin."""
    import time

    from parakeet_worker.engine.streaming import StreamDecoder

    async def run():
        dec = StreamDecoder(engine)  # not started: the test cuts the frames a step would take
        n = dec.frame_samples
        audio = np.random.default_rng(6).standard_normal(200_000 + 6 * n).astype(np.float32)

        def cuts(stream, count, refill=None):
            best, taken = float("inf"), []
            for _ in range(count):
                if refill is not None:
                    for x in np.split(refill, len(refill)):
                        dec.push(stream, x)
                t0 = time.perf_counter()
                frame = dec._next_frame(stream)
                best = min(best, time.perf_counter() - t0)
                taken.append(frame.samples.numpy())
            return best, np.concatenate(taken)

        big = dec.open()
        for x in np.split(audio, len(audio)):  # one sample per frame, as a hostile client sends
            dec.push(big, x)
        big_s, got = cuts(big, 5)
        assert np.array_equal(got, audio[: 5 * n])  # every sample, in order
        assert big.pending_n == len(audio) - 5 * n
        small = dec.open()
        small_s, got = cuts(small, 5, refill=audio[:n])
        assert np.array_equal(got, np.tile(audio[:n], 5))
        dec.abort(big)
        dec.abort(small)
        return big_s, small_s

    big_s, small_s = asyncio.run(run())
    assert big_s < 4 * small_s + 0.005, f"a step's cut took {big_s:.4f} s behind 200k frames, {small_s:.4f} s alone"


def test_a_websocket_jobs_token_is_revoked_when_the_job_ends(engine, monkeypatch, caplog):
    """The real job lifecycle (websocket_job.serve_websocket) on a loopback WebSocket server: its
    token works while the job runs, fails afterwards, and never appears in the log."""
    import dataclasses
    import logging

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    from parakeet_worker.serving import websocket_job
    from parakeet_worker.serving.job_schema import parse_request
    from tests.helpers import free_port

    port = free_port()
    settings = dataclasses.replace(engine.settings, listen_host="127.0.0.1", listen_port=port, auth_token="")
    monkeypatch.setattr(websocket_job, "_server", None)
    monkeypatch.setattr(websocket_job, "_lock", asyncio.Lock())
    caplog.set_level(logging.DEBUG)
    req = parse_request({"action": "websocket", "idle_timeout": 1})
    url = f"ws://127.0.0.1:{port}"

    async def status_of(u):
        try:
            async with connect(u) as ws:
                return json.loads(await ws.recv())["type"]
        except InvalidStatus as e:
            return e.response.status_code

    async def main():
        first = websocket_job.serve_websocket({"id": "job-1"}, req, settings, lambda: engine)
        token = (await anext(first))["token"]
        during = [
            await status_of(url),
            await status_of(f"{url}/?token=wrong"),
            await status_of(f"{url}/?token={token}"),
        ]
        assert (await anext(first))["status"] == "finished"
        after = await status_of(f"{url}/?token={token}")
        second = websocket_job.serve_websocket({"id": "job-2"}, req, settings, lambda: engine)
        token2 = (await anext(second))["token"]
        during2 = [await status_of(f"{url}/?token={token}"), await status_of(f"{url}/?token={token2}")]
        await anext(second)
        await websocket_job._server.close()
        return token, token2, during, after, during2

    token, token2, during, after, during2 = asyncio.run(main())
    assert during == [401, 401, "welcome"]
    assert after == 401  # revoked with its job
    assert token2 != token and during2 == [401, "welcome"]
    server_side = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
    assert "GET / 101" in server_side  # the request log is there, with the path only (never the query)
    assert token not in server_side and token2 not in server_side


def test_a_warning_when_serving_beyond_loopback_without_a_token():
    import dataclasses

    from parakeet_worker.config.settings import Settings
    from parakeet_worker.serving.asr_server import ASRServer

    open_server = ASRServer(Settings(auth_token=""))
    assert "WS_AUTH_TOKEN" in open_server.exposure_warning("0.0.0.0")
    assert "WS_AUTH_TOKEN" in open_server.exposure_warning("")
    assert open_server.exposure_warning("127.0.0.1") is None and open_server.exposure_warning("::1") is None
    assert ASRServer(dataclasses.replace(Settings(), auth_token="t")).exposure_warning("0.0.0.0") is None
