"""Audio input: base64 forms, sniffing, decoding every claimed format, limits, the URL policy and
downloads (from loopback test servers only)."""

import asyncio
import base64
import random

import numpy as np
import pytest
from aiohttp import web

from parakeet_worker.audio import fetch
from parakeet_worker.audio.decode import decode_audio
from parakeet_worker.audio.fetch import DownloadPolicy
from parakeet_worker.audio.formats import decode_base64, sniff_format
from parakeet_worker.audio.url_policy import check_url
from parakeet_worker.config.errors import ASRError
from tests.helpers import FORMATS, write_wav


def code_of(fn, *a, **k):
    with pytest.raises(ASRError) as ei:
        fn(*a, **k)
    return ei.value.code


# ------------------------------------------------------------------ base64
@pytest.mark.parametrize("form", ["standard", "urlsafe", "unpadded", "data_url", "wrapped"])
def test_base64_forms_decode_to_the_same_bytes(form):
    raw = bytes(range(256)) * 3 + b"\xfb\xff"  # has '+' and '/' in standard form, needs padding
    std = base64.b64encode(raw).decode()
    text = {
        "standard": std,
        "urlsafe": base64.urlsafe_b64encode(raw).decode(),
        "unpadded": std.rstrip("="),
        "data_url": "data:audio/wav;base64," + std,
        "wrapped": "\n".join(std[i : i + 76] for i in range(0, len(std), 76)),
    }[form]
    assert decode_base64(text, 1 << 20) == raw


@pytest.mark.parametrize("bad", ["not base64 at all!", "abc$def", "", "   ", "====", "A"])
def test_bad_base64_is_invalid_input(bad):
    assert code_of(decode_base64, bad, 1 << 20) == "invalid_input"


def test_base64_size_limit_is_checked_before_decoding():
    assert code_of(decode_base64, "A" * 4000, 1000) == "audio_too_large"


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_decodes_to_16k_mono(speech_files, fmt):
    src = decode_audio(speech_files["wav"].read_bytes(), 3600)
    got = decode_audio(speech_files[fmt].read_bytes(), 3600)
    assert got.samples.dtype == np.float32 and got.samples.ndim == 1
    assert abs(got.duration - src.duration) < 0.15, (fmt, got.duration, src.duration)
    assert got.format == fmt
    assert np.abs(got.samples).max() > 0.05  # really the speech, not silence


def test_sniffing_ignores_a_wrong_extension_and_hint(speech_files):
    data = speech_files["mp3"].read_bytes()
    assert sniff_format(data[:512]) == "mp3"
    assert decode_audio(data, 3600, format_hint="wav").format == "mp3"


def test_decodes_from_a_file_path_too(speech_files):
    assert decode_audio(speech_files["m4a"], 3600).duration > 1.0


@pytest.mark.parametrize("case", ["garbage", "truncated_mp3", "truncated_wav_header", "empty"])
def test_broken_audio_is_refused_with_a_code(speech_files, case):
    data = {
        "garbage": b"\x01" + random.Random(5).randbytes(20000).replace(b"\xff", b"\x00"),  # seeded: not flaky
        "truncated_mp3": speech_files["mp3"].read_bytes()[:3000],
        "truncated_wav_header": speech_files["wav"].read_bytes()[:30],
        "empty": b"",
    }[case]
    # bytes that are no known container are never handed to ffmpeg to guess (issue 13)
    assert code_of(decode_audio, data, 3600) == ("unsupported_format" if case == "garbage" else "invalid_audio")


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\0" * 100, b"<!DOCTYPE html><html></html>", b"%PDF-1.4 xx"])
def test_non_audio_files_are_unsupported_format(data):
    assert code_of(decode_audio, data, 3600) == "unsupported_format"


def test_unknown_format_hint_is_unsupported_format(speech_files):
    assert code_of(decode_audio, speech_files["wav"].read_bytes(), 3600, format_hint="exe") == "unsupported_format"


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_duration_limit(speech_files, fmt):
    assert code_of(decode_audio, speech_files[fmt].read_bytes(), 1.0) == "audio_too_long"


def test_silence_decodes_to_zeros(tmp_path):
    got = decode_audio(write_wav(tmp_path / "s.wav", np.zeros(16000, np.float32)).read_bytes(), 60)
    assert got.duration == pytest.approx(1.0) and not got.samples.any()


# ------------------------------------------------------------------ URL policy (no traffic)
@pytest.mark.parametrize(
    "url,addresses",
    [
        ("http://127.0.0.1/a.wav", None),
        ("http://127.3.4.5:8080/a.wav", None),
        ("http://localhost/a.wav", None),
        ("http://LOCALHOST./a.wav", None),
        ("http://[::1]/a.wav", None),
        ("http://0.0.0.0/a.wav", None),
        ("http://10.1.2.3/a.wav", None),
        ("http://192.168.1.10/a.wav", None),
        ("http://172.20.0.1/a.wav", None),
        ("http://100.100.100.200/latest/meta-data", None),
        ("http://169.254.169.254/latest/meta-data/", None),
        ("http://metadata.google.internal/computeMetadata/v1/", None),
        ("http://[::ffff:127.0.0.1]/a.wav", None),
        ("http://[fd00:ec2::254]/", None),
        ("http://224.0.0.1/a.wav", None),
        ("http://example.com/a.wav", ["127.0.0.1"]),  # DNS answer is checked, not only the name
        ("http://example.com/a.wav", ["93.184.215.14", "10.0.0.7"]),  # any bad address refuses
        ("http://example.com/a.wav", ["2002:7f00:1::1"]),  # 6to4 wrapping 127.0.0.1
        ("file:///etc/passwd", None),
        ("ftp://example.com/a.wav", None),
        ("gopher://example.com/", None),
        ("http://user:pw@example.com/a.wav", None),
    ],
)
def test_url_policy_refuses(url, addresses):
    assert code_of(check_url, url, addresses) == "forbidden_url"


@pytest.mark.parametrize(
    "url,addresses",
    [
        ("https://example.com/a.mp3", None),
        ("https://example.com/a.mp3", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]),
        ("http://8.8.8.8/a.wav", None),
    ],
)
def test_url_policy_allows_public(url, addresses):
    assert check_url(url, addresses).url.host == url.split("/")[2]


def test_url_policy_switches():
    assert check_url("http://127.0.0.1:9/a", ["127.0.0.1"], allow_private=True).host == "127.0.0.1"
    assert check_url("http://127.0.0.1:9/a", ["127.0.0.1"], allowed_hosts=("127.0.0.1:9",)).exempt
    assert code_of(check_url, "http://127.0.0.1:10/a", ["127.0.0.1"], allowed_hosts=("127.0.0.1:9",)) == "forbidden_url"


def test_malformed_urls_are_invalid_input():
    assert code_of(check_url, "http://[::1/a", None) == "invalid_input"
    assert code_of(check_url, "http:///a.wav", None) == "invalid_input"


# ------------------------------------------------------------------ downloads (loopback servers)
async def _serve(routes):
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port


def _policy(port, **kw):
    return DownloadPolicy(
        **{"max_bytes": 1 << 20, "timeout_s": 5, "max_redirects": 3, "allowed_hosts": (f"127.0.0.1:{port}",), **kw}
    )


def test_download_fetches_and_enforces_policy_on_every_hop(speech_files):
    body = speech_files["mp3"].read_bytes()

    async def main():
        async def audio(_):
            return web.Response(body=body)

        async def stream_big(request):
            resp = web.StreamResponse()  # no Content-Length: the limit must hold while streaming
            await resp.prepare(request)
            for _ in range(64):
                await resp.write(b"\0" * 65536)
            return resp

        def redirect(to):
            async def handle(_):
                raise web.HTTPFound(to() if callable(to) else to)

            return handle

        async def missing(_):
            raise web.HTTPNotFound()

        other, other_port = await _serve([web.get("/a.mp3", audio)])
        routes = [
            web.get("/a.mp3", audio),
            web.get("/hop", redirect("/a.mp3")),
            web.get("/to_other", redirect(f"http://127.0.0.1:{other_port}/a.mp3")),
            web.get("/to_localhost", redirect(lambda: f"http://localhost:{port}/a.mp3")),
            web.get("/loop", redirect("/loop")),
            web.get("/missing", missing),
            web.get("/big", stream_big),
        ]
        runner, port = await _serve(routes)
        base = f"http://127.0.0.1:{port}"
        try:
            path = await fetch.download(f"{base}/a.mp3", _policy(port))
            assert path.read_bytes() == body
            path.unlink()
            path = await fetch.download(f"{base}/hop", _policy(port))  # same allowed host
            assert path.read_bytes() == body
            path.unlink()
            results = {}
            for name, url, policy in [
                ("other_port", f"{base}/to_other", _policy(port)),
                ("localhost", f"{base}/to_localhost", _policy(port)),
                ("first_hop", f"{base}/a.mp3", _policy(0)),  # nothing allowed: loopback refused
                ("loop", f"{base}/loop", _policy(port)),
                ("missing", f"{base}/missing", _policy(port)),
                ("big", f"{base}/big", _policy(port, max_bytes=100_000)),
            ]:
                with pytest.raises(ASRError) as ei:
                    await fetch.download(url, policy)
                results[name] = ei.value.code
            assert results == {
                "other_port": "forbidden_url",
                "localhost": "forbidden_url",
                "first_hop": "forbidden_url",
                "loop": "download_failed",
                "missing": "download_failed",
                "big": "audio_too_large",
            }
        finally:
            await runner.cleanup()
            await other.cleanup()

    asyncio.run(main())


def test_download_timeout():
    async def main():
        async def slow(_):
            await asyncio.sleep(5)
            return web.Response(body=b"x")

        runner, port = await _serve([web.get("/slow", slow)])
        try:
            with pytest.raises(ASRError) as ei:
                await fetch.download(f"http://127.0.0.1:{port}/slow", _policy(port, timeout_s=0.5))
            assert ei.value.code == "download_failed" and "timed out" in ei.value.message
        finally:
            await runner.cleanup()

    asyncio.run(main())
