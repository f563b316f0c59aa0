"""Fuzz every parser that takes untrusted input. Any exception other than our coded errors
(``ASRError``) is a defect, and so is a broken invariant.

    python tools/fuzz.py --seconds 600                      # every target, 600 s each
    python tools/fuzz.py --seconds 60 --target url --seed 7 # one target
    python tools/fuzz.py --replay                           # only the committed corpus

Targets: ``decode`` (decode_audio on real files of every supported format, mutated), ``base64``,
``request`` (the job-input parser), ``url`` (the URL policy, with the address the client would
really connect to as the oracle), ``ws`` (the WebSocket message parser), ``openai`` (the OpenAI
route's form fields: only its coded 4xx errors, and a request that honours OpenAI's rules) and
``multipart`` (the route's form reader on raw, mutated multipart bodies: a 4xx or a form, never
anything else).
Each finding is written to ``tests/fuzz_corpus/<target>/`` (kept in git: tests replay it). Every
target's folder also holds a small seed corpus of real inputs, valid and hostile (tiny speech files
in several containers, job inputs, URLs, WebSocket messages, form fields, multipart bodies); the
replay test fails on an empty folder.
Built on hypothesis: strategies generate and mutate, its shrinker makes findings small.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from parakeet_worker.config.errors import ASRError  # noqa: E402
from tools.test_model import synth  # noqa: E402

CORPUS = ROOT / "tests" / "fuzz_corpus"
MAX_SECONDS = 30.0  # decode limit while fuzzing: mutated headers claiming hours are refused fast
MAX_BYTES = 1 << 20


# ------------------------------------------------------------------ seeds for decode
# One short tone in every container the product reads (what sniffing recognises), plus FLAC
# written to a pipe (unknown length) and multichannel/float WAV.
SEED_ENCODINGS = {
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    "wav_float_stereo": ["-ac", "2", "-c:a", "pcm_f32le", "-f", "wav"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "flac_6ch": ["-ac", "6", "-c:a", "flac", "-f", "flac"],
    "flac_piped": ["-c:a", "flac", "-f", "flac"],  # STREAMINFO: 0 samples
    "mp3": ["-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3"],
    "ogg": ["-c:a", "libvorbis", "-f", "ogg"],
    "opus": ["-c:a", "libopus", "-b:a", "16k", "-f", "ogg"],
    "webm": ["-c:a", "libopus", "-b:a", "16k", "-f", "webm"],
    "m4a": ["-c:a", "aac", "-b:a", "32k", "-f", "ipod"],
    "aac": ["-c:a", "aac", "-b:a", "32k", "-f", "adts"],
    "aiff": ["-c:a", "pcm_s16be", "-f", "aiff"],
    "wma": ["-c:a", "wmav1", "-f", "asf"],
}


def decode_seeds(cache: Path | None = None) -> dict[str, bytes]:
    cache = cache or Path(tempfile.gettempdir()) / "asr-fuzz-seeds"
    cache.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for name, args in SEED_ENCODINGS.items():
        path = cache / f"{name}.bin"
        if not path.exists():  # to a file (MP4 needs seeking), except the piped FLAC
            out = "pipe:1" if name.endswith("piped") else str(path)
            data = synth.ffmpeg_lavfi("sine=f=440:d=0.4:sample_rate=16000", out, *args)
            if out == "pipe:1":
                path.write_bytes(data)
        seeds[name] = path.read_bytes()
    return seeds


@st.composite
def mutated(draw, seeds: list[bytes]):
    """A seed file with a few byte-level mutations: flips, inserts, deletes, truncation, splices
    from another seed, and "interesting" integers (0, -1, 2^31...) written over header fields."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice", "int", "head"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, max(0, len(other) - 1)))
            data[pos : pos + 32] = other[start : start + 32]
        elif op == "int":
            value = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            width = draw(st.sampled_from([1, 2, 4]))
            data[pos : pos + width] = (value & ((1 << 8 * width) - 1)).to_bytes(
                width, draw(st.sampled_from(["little", "big"]))
            )
        elif op == "head":  # mutate the first 64 bytes, where headers live
            p = draw(st.integers(0, min(63, max(0, len(data) - 1))))
            if data:
                data[p] = draw(st.integers(0, 255))
    return bytes(data)


# ------------------------------------------------------------------ targets
@dataclass
class Target:
    name: str
    strategy: object
    check: object  # raises on a defect; coded errors are fine
    examples_per_round: int


def check_decode(data: bytes) -> None:
    from parakeet_worker.audio.decode import SAMPLE_RATE, decode_audio

    try:
        audio = decode_audio(data, MAX_SECONDS)
    except ASRError:
        return
    s = audio.samples
    assert s.dtype == np.float32 and s.ndim == 1, (s.dtype, s.shape)
    assert len(s) <= MAX_SECONDS * SAMPLE_RATE, len(s)
    assert np.isfinite(s).all(), "decoded samples contain NaN or infinity"


def check_base64(text: str) -> None:
    from parakeet_worker.audio.formats import decode_base64

    try:
        data = decode_base64(text, 4096)
    except ASRError:
        return
    assert isinstance(data, bytes) and 0 < len(data) <= 4096, len(data)


def check_request(job_input) -> None:
    from parakeet_worker.serving.job_schema import parse_request

    try:
        req = parse_request(job_input)
    except ASRError:
        return
    assert req.action in ("transcribe", "websocket") and req.output_format in ("json", "text", "srt", "vtt")
    if req.action == "transcribe":
        assert (req.audio_base64 is None) != (req.audio_url is None)


def _numeric_addresses(host: str) -> list[str]:
    """What getaddrinfo makes of ``host`` without any DNS (numeric forms only: "127.1", "0x7f.1")."""
    try:
        infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return []
    return [i[4][0] for i in infos]


def check_url(case) -> None:
    from yarl import URL

    from parakeet_worker.audio import url_policy

    url, addresses = case
    try:
        target = url_policy.check_url(url, addresses)
    except ASRError:
        return
    assert not target.exempt
    # the oracle: whatever the client will connect to must be public
    client_host = URL(str(target.url)).raw_host
    assert client_host == target.host.rstrip(".") or client_host.rstrip(".").lower() == target.host, (
        client_host,
        target.host,
    )
    for addr in _numeric_addresses(client_host) + list(addresses or []):
        assert url_policy.address_is_public(addr), f"{url!r} accepted but connects to {addr}"


def check_ws(raw: str) -> None:
    from parakeet_worker.serving.live_session import parse_message

    try:
        msg = parse_message(raw)
    except ASRError as e:
        assert e.code == "invalid_json"
        return
    assert isinstance(msg, dict)


def check_openai(fields) -> None:
    from parakeet_worker.serving import upload as openai_upload
    from parakeet_worker.serving.openai import request as openai_request

    try:
        req = openai_request.parse_fields(fields)
    except openai_upload.APIError as e:
        assert 400 <= e.status < 500 and e.message, (e.status, e.message)
        return
    assert req.response_format in openai_request.RESPONSE_FORMATS
    assert req.granularities and set(req.granularities) <= set(openai_request.GRANULARITIES)
    assert not fields.get("timestamp_granularities[]") or req.response_format == "verbose_json"
    assert req.language is None or req.language in openai_request.LANGUAGES
    assert req.hotwords is None or 0 < len(req.hotwords.phrases) <= 100


def check_deepgram(pairs) -> None:
    """Deepgram's /v1/listen query (repeated keys allowed): options or a ListenError, nothing else."""
    from multidict import MultiDict

    from parakeet_worker.serving.deepgram.messages import ListenError, parse_options

    try:
        o = parse_options(MultiDict(pairs), 800)
    except ListenError as e:
        assert str(e)
        return
    assert 8000 <= o.sample_rate <= 48000 and (o.encoding is None or o.encoding.lower() == "linear16")
    assert o.endpointing_ms is None or o.endpointing_ms >= 80
    assert o.hotwords is None or 0 < len(o.hotwords.phrases) <= 100


def check_realtime(case) -> None:
    """A realtime session.update's ``session``: a config or a RealtimeError, nothing else."""
    from parakeet_worker.serving.openai.realtime_config import RealtimeError, TranscriptionConfig, parse_session

    kind, session = case
    try:
        c = parse_session(session, kind, TranscriptionConfig())
    except RealtimeError as e:
        assert e.code and e.message
        return
    assert c.rate in (8000, 16000, 24000, 44100, 48000)
    assert c.turn_detection is None or 80 <= c.turn_detection["silence_duration_ms"] <= 10_000


def check_deltas(updates) -> None:
    """Append-only deltas from any sequence of partials and finals concatenate to the text."""
    from parakeet_worker.serving.live import AppendOnly

    text, sent = AppendOnly(), ""
    for final, words in updates:
        delta = text.final(words) if final else text.partial(words)
        sent += delta
        assert sent == text.text


# Characters that URL libraries or resolvers map onto ASCII digits, dots and brackets.
CONFUSABLES = "。．｡︒０１２３４５６７８９①②③⑦⑧⓪𝟏𝟕１７ⅰⅠ［］：＠／⁄ᵃ"
URL_ALPHABET = "0123456789abcdefx.:[]@/%-_ftpshlocaAZ" + CONFUSABLES


def check_multipart(case) -> None:
    """The upload reader on a raw body: it returns the form, or refuses with a 4xx APIError."""
    import asyncio
    import types

    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.streams import StreamReader
    from multidict import CIMultiDict

    from parakeet_worker.serving import upload as openai_upload

    ctype, body = case[0], case[1].encode("latin-1")  # (a JSON-friendly pair: findings are saved as JSON)

    async def run():
        loop = asyncio.get_running_loop()
        stream = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        stream.feed_data(body)
        stream.feed_eof()
        request = types.SimpleNamespace(
            content_type=ctype.split(";")[0].strip().lower(),
            content_length=len(body),
            headers=CIMultiDict({"Content-Type": ctype}),
            content=stream,
        )
        with tempfile.TemporaryDirectory() as tmp:
            budget = openai_upload.UploadBudget(4, 1 << 22)
            try:
                with budget.upload() as upload:
                    await openai_upload.read_form(
                        request, Path(tmp) / "audio", upload, openai_upload.UploadLimits(1 << 20, 2.0, 5.0)
                    )
            except openai_upload.APIError as e:
                assert 400 <= e.status < 500, (e.status, e.message)
            assert budget.spooled == 0 and budget.active == 0  # everything given back

    asyncio.run(run())


def multipart_cases():
    boundary = st.sampled_from(["XyZ", "----b", "a" * 70, "a" * 71, "", "x y", "é"]) | st.text(max_size=12)
    headers = st.lists(
        st.sampled_from(
            [
                'Content-Disposition: form-data; name="file"; filename="a.wav"',
                'Content-Disposition: form-data; name="model"',
                "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%E2%82%AC.wav",
                "Content-Disposition: x",
                "Content-Transfer-Encoding: base64",
                "Content-Transfer-Encoding: rot13",
                "Content-Encoding: gzip",
                "Content-Type: text/plain; charset=utf-99",
                "X: " + "h" * 9000,
                'Content-Disposition: form-data; name="a\x00"',
            ]
        ),
        max_size=4,
    )
    payload = st.binary(max_size=300)

    def body(b, parts, preamble, closing, cut):
        raw = preamble
        for hs, data in parts:
            raw += b"--" + b.encode("utf-8", "replace") + b"\r\n" + "\r\n".join(hs).encode("utf-8", "replace")
            raw += b"\r\n\r\n" + data + b"\r\n"
        if closing:
            raw += b"--" + b.encode("utf-8", "replace") + b"--\r\n"
        return (raw[:cut] if cut is not None else raw).decode("latin-1")

    bodies = st.builds(
        body,
        boundary,
        st.lists(st.tuples(headers, payload), max_size=4),
        st.binary(max_size=40),
        st.booleans(),
        st.none() | st.integers(0, 600),
    )
    ctype = st.builds(
        lambda b, extra: f"multipart/form-data; boundary={b}{extra}",
        boundary,
        st.sampled_from(["", "; charset=utf-8", '"', "; boundary=other"]),
    )
    return st.tuples(ctype | st.just("multipart/form-data"), bodies)


def url_cases():
    host = st.one_of(
        st.text(alphabet=URL_ALPHABET, min_size=1, max_size=24),
        st.sampled_from(
            [
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "169.254.169.254",
                "8.8.8.8",
                "example.com",
                "[::1]",
                "[::ffff:127.0.0.1]",
                "[::127.0.0.1]",
                "[64:ff9b::7f00:1]",
                "2130706433",
                "0x7f.1",
                "127.1",
                "０",
                "127。0。0。1",
                "[fe80::1%25lo]",
            ]
        ),
        st.builds(
            lambda parts, sep: sep.join(parts),
            st.lists(
                st.sampled_from(["127", "0", "1", "10", "169", "254", "0x7f", "１２７", "⓪", "01"]),
                min_size=1,
                max_size=5,
            ),
            st.sampled_from([".", "。", "．", "｡"]),
        ),
    )
    url = st.builds(
        lambda scheme, h, port, path: f"{scheme}://{h}{port}{path}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "gopher", ""]),
        host,
        st.sampled_from(["", ":80", ":8080", ":0", ":99999", ":", ":x"]),
        st.sampled_from(["/", "/a.mp3", "", "?x", "#f", "/../a"]),
    )
    addresses = st.one_of(
        st.none(),
        st.lists(
            st.one_of(st.ip_addresses().map(str), st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", "::ffff:0:7f00:1"])),
            max_size=3,
        ),
    )
    return st.tuples(st.one_of(url, st.text(max_size=60)), addresses)


def request_cases():
    json_value = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
    keys = st.sampled_from(
        [
            "audio_base64",
            "audio_url",
            "format",
            "timestamps",
            "use_local_attention",
            "chunk_long_audio",
            "chunk_duration",
            "output_format",
            "action",
            "idle_timeout",
            "max_lifetime",
            "hotwords",
            "language",
            "",
        ]
    ) | st.text(max_size=10)
    good = st.fixed_dictionaries(
        {"audio_base64": st.just("UklGRg==")},
        optional={
            "output_format": st.sampled_from(["json", "SRT", "vtt", "text", "pdf", ""]) | json_value,
            "chunk_duration": st.floats() | st.integers() | json_value,
            "timestamps": st.booleans() | json_value,
            "action": st.sampled_from(["transcribe", "websocket", "WebSocket"]) | json_value,
        },
    )
    return st.one_of(st.dictionaries(keys, json_value, max_size=6), good, json_value)


def base64_cases():
    return st.one_of(
        st.text(max_size=200),
        st.binary(max_size=3000).map(lambda b: __import__("base64").b64encode(b).decode()),
        st.builds(
            lambda prefix, body, junk: prefix + body + junk,
            st.sampled_from(["", "data:audio/wav;base64,", "data:,", "DATA:;BASE64,", "data:"]),
            st.binary(max_size=64).map(lambda b: __import__("base64").urlsafe_b64encode(b).decode()),
            st.text(alphabet="=-_+/ \n\t\x00é", max_size=8),
        ),
    )


def ws_cases():
    json_text = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=10,
    ).map(json.dumps)
    return st.one_of(
        st.text(max_size=100),
        json_text,
        st.builds(lambda n, c: c * n, st.integers(1, 200_000), st.sampled_from(["[", '{"a":', "-", "1e", "\\"])),
    )


def openai_cases():
    """Form fields as the multipart reader hands them over: name -> list of strings."""
    from parakeet_worker.serving.openai.request import FIELDS

    names = st.sampled_from(sorted(FIELDS) + ["chunking_strategy[type]"]) | st.text(max_size=8)
    values = st.sampled_from(
        [
            "json",
            "verbose_json",
            "text",
            "srt",
            "vtt",
            "word",
            "segment",
            "en",
            "EN",
            "zh",
            "0",
            "1",
            "0.5",
            "nan",
            "-1",
            "1e308",
            "true",
            "false",
            "Kubernetes",
            "<b>",
            "",
        ]
    ) | st.text(max_size=60)
    return st.dictionaries(names, st.lists(values, min_size=1, max_size=4), max_size=8)


def deepgram_cases():
    keys = st.sampled_from(
        [
            "encoding",
            "sample_rate",
            "channels",
            "interim_results",
            "endpointing",
            "utterance_end_ms",
            "vad_events",
            "keyterm",
            "keywords",
            "model",
            "multichannel",
        ]
    )
    values = st.sampled_from(
        ["linear16", "mulaw", "16000", "0", "-1", "1e9", "true", "false", "TRUE", "300", "1000", "nova-3", "word:2", ""]
    ) | st.text(max_size=60)
    return st.lists(st.tuples(keys | st.text(max_size=8), values), max_size=12)


def realtime_cases():
    json_value = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    )
    fmt = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["audio/pcm", "audio/pcmu"]) | json_value,
            "rate": st.sampled_from([24000, 16000, 11025, True]) | json_value,
        },
    )
    turn = st.none() | st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["server_vad", "semantic_vad", "x"]) | json_value,
            "silence_duration_ms": st.integers(-10, 20_000) | json_value,
        },
    )
    transcription = st.fixed_dictionaries(
        {},
        optional={
            "keywords": st.lists(st.text(max_size=20), max_size=5) | json_value,
            "prompt": st.text(max_size=80) | json_value,
            "language": json_value,
            "model": json_value,
        },
    )
    audio_in = st.fixed_dictionaries(
        {},
        optional={
            "format": fmt | json_value,
            "turn_detection": turn | json_value,
            "transcription": transcription | json_value,
        },
    )
    session = st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["transcription", "realtime"]) | json_value,
            "audio": st.fixed_dictionaries({}, optional={"input": audio_in}) | json_value,
        },
    )
    kinds = st.sampled_from(["session.update", "transcription_session.update"])
    return st.tuples(kinds, session | json_value)


def delta_cases():
    words = st.lists(st.sampled_from(["a", "b", "c", "hello", "world", "Hello,", ""]), max_size=6).map(" ".join)
    return st.lists(st.tuples(st.booleans(), words), max_size=20)


def targets(seeds: dict[str, bytes] | None = None) -> dict[str, Target]:
    seeds = seeds if seeds is not None else decode_seeds()
    return {
        "decode": Target("decode", mutated(list(seeds.values())), check_decode, 25),
        "base64": Target("base64", base64_cases(), check_base64, 300),
        "request": Target("request", request_cases(), check_request, 300),
        "url": Target("url", url_cases(), check_url, 300),
        "ws": Target("ws", ws_cases(), check_ws, 300),
        "openai": Target("openai", openai_cases(), check_openai, 300),
        "multipart": Target("multipart", multipart_cases(), check_multipart, 300),
        "deepgram": Target("deepgram", deepgram_cases(), check_deepgram, 300),
        "realtime": Target("realtime", realtime_cases(), check_realtime, 300),
        "deltas": Target("deltas", delta_cases(), check_deltas, 300),
    }


# ------------------------------------------------------------------ running
@dataclass
class Finding:
    target: str
    error: str
    input: object

    def save(self, corpus: Path = CORPUS) -> Path:
        d = corpus / self.target
        d.mkdir(parents=True, exist_ok=True)
        data = self.input if isinstance(self.input, bytes) else json.dumps(self.input).encode()
        path = d / (hashlib.sha1(data).hexdigest()[:16] + (".bin" if isinstance(self.input, bytes) else ".json"))
        path.write_bytes(data)
        return path


def fuzz(
    target: Target, seconds: float, seed: int = 0, max_rounds: int | None = None, examples_per_round: int | None = None
) -> tuple[int, list[Finding]]:
    """Run ``target`` for ``seconds`` (or ``max_rounds`` rounds): (examples tried, findings)."""
    deadline = time.monotonic() + seconds
    examples, findings, seen, rounds = 0, [], set(), 0
    last: dict = {}  # the input of the latest call: after a failure, hypothesis' shrunk example

    def check(x):
        nonlocal examples
        examples += 1
        last["input"] = x
        target.check(x)

    config = settings(
        max_examples=examples_per_round or target.examples_per_round,
        deadline=None,
        database=None,
        print_blob=False,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    while time.monotonic() < deadline and (max_rounds is None or rounds < max_rounds):
        test = config(given(target.strategy)(check))
        try:
            hypothesis_seed(seed + rounds)(test)()
        except Exception as exc:  # noqa: BLE001 - that is what we are looking for
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            if key not in seen:
                seen.add(key)
                findings.append(Finding(target.name, key, last.get("input")))
        rounds += 1
    return examples, findings


def replay(target: Target, corpus: Path = CORPUS) -> list[Finding]:
    """Every committed corpus input of ``target`` through its check: the bugs they found stay fixed."""
    found = []
    for path in sorted((corpus / target.name).glob("*")):
        raw = path.read_bytes()
        value = raw if path.suffix == ".bin" else json.loads(raw)
        if target.name == "url" and isinstance(value, list):
            value = tuple(value)
        try:
            target.check(value)
        except Exception as exc:  # noqa: BLE001
            found.append(Finding(target.name, f"{path.name}: {type(exc).__name__}: {exc}", value))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="fuzzing time per target")
    ap.add_argument(
        "--target",
        choices=[
            "all",
            "decode",
            "base64",
            "request",
            "url",
            "ws",
            "openai",
            "multipart",
            "deepgram",
            "realtime",
            "deltas",
        ],
        default="all",
    )
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--replay", action="store_true", help="only replay the committed corpus")
    ap.add_argument("--save", action="store_true", help="write new findings to tests/fuzz_corpus/")
    args = ap.parse_args(argv)
    all_targets = targets()
    chosen = list(all_targets) if args.target == "all" else [args.target]
    failed = 0
    for name in chosen:
        t0 = time.monotonic()
        findings = replay(all_targets[name])
        examples = 0
        if not args.replay:
            examples, new = fuzz(all_targets[name], args.seconds, args.seed)
            findings += new
        for f in findings:
            where = (
                f.save()
                if args.save and not f.error.startswith(tuple(p.name for p in (CORPUS / name).glob("*")))
                else None
            )
            print(
                json.dumps(
                    {
                        "target": name,
                        "finding": f.error,
                        "input": repr(f.input)[:200],
                        "saved": str(where) if where else None,
                    }
                ),
                flush=True,
            )
        print(
            json.dumps(
                {
                    "target": name,
                    "seconds": round(time.monotonic() - t0, 1),
                    "examples": examples,
                    "findings": len(findings),
                    "seed": args.seed,
                }
            ),
            flush=True,
        )
        failed += bool(findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
