"""The batch input schema and value rules (job_schema.parse_request), without a worker."""

import pytest

from parakeet_worker.config.errors import INVALID_INPUT, ASRError
from parakeet_worker.serving.job_schema import INPUT_SCHEMA, Request, parse_request


def refused(job_input) -> str:
    with pytest.raises(ASRError) as ei:
        parse_request(job_input)
    assert ei.value.code == INVALID_INPUT
    return ei.value.message


def test_defaults_fill_every_field():
    req = parse_request({"audio_url": "https://example.com/a.mp3"})
    assert req == Request(
        audio_base64=None,
        audio_url="https://example.com/a.mp3",
        format=None,
        timestamps=True,
        use_local_attention=False,
        chunk_long_audio=False,
        chunk_duration=30.0,
        output_format="json",
        action="transcribe",
        hotwords=None,
        idle_timeout=60.0,
        max_lifetime=3600.0,
    )
    assert set(Request.__dataclass_fields__) == set(INPUT_SCHEMA) - {"hotword_boost"}  # folded into hotwords


def test_names_are_case_insensitive_and_numbers_may_be_ints():
    req = parse_request({"audio_base64": "AAAA", "output_format": "SRT", "action": "Transcribe", "chunk_duration": 45})
    assert (req.output_format, req.action, req.chunk_duration) == ("srt", "transcribe", 45)


@pytest.mark.parametrize("bad", [["a"], "text", 3, None])
def test_input_must_be_an_object(bad):
    assert refused(bad) == "input must be a JSON object"


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        ({}, "give exactly one of audio_base64 or audio_url"),
        (
            {"audio_base64": "AAAA", "audio_url": "https://example.com/a.mp3"},
            "give exactly one of audio_base64 or audio_url",
        ),
        (
            {"audio_base64": "AAAA", "output_format": "srt", "timestamps": False},
            "output_format srt needs timestamps=true",
        ),
        (
            {"audio_base64": "AAAA", "output_format": "vtt", "timestamps": False},
            "output_format vtt needs timestamps=true",
        ),
        ({"audio_base64": "AAAA", "idle_timeout": 30}, "idle_timeout only apply to action 'websocket'"),
        (
            {"action": "websocket", "audio_url": "https://example.com/a.mp3"},
            "action 'websocket' takes no audio: stream it to the ws_url it returns",
        ),
    ],
)
def test_combination_rules(job_input, message):
    assert refused(job_input) == message


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("chunk_duration", 4.9, "a number of seconds from 5 to 3600"),
        ("chunk_duration", 3601, "a number of seconds from 5 to 3600"),
        ("chunk_duration", -5.0, "a number of seconds from 5 to 3600"),  # the SDK validator alone lets it pass
        ("output_format", "docx", "one of json, text, srt, vtt"),
        ("action", "translate", "one of transcribe, websocket"),
    ],
)
def test_value_rules(field, value, hint):
    assert f"{field} must be {hint}" in refused({"audio_base64": "AAAA", field: value})


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("idle_timeout", 0.5, "a number of seconds from 1 to 3600"),
        ("idle_timeout", True, "a number of seconds from 1 to 3600"),
        ("max_lifetime", 5, "a number of seconds from 10 to 86400"),
        ("max_lifetime", 86401, "a number of seconds from 10 to 86400"),
    ],
)
def test_websocket_value_rules(field, value, hint):
    assert f"{field} must be {hint}" in refused({"action": "websocket", field: value})


def test_websocket_job_takes_its_own_limits():
    req = parse_request({"action": "websocket", "idle_timeout": 5, "max_lifetime": 600})
    assert (req.action, req.idle_timeout, req.max_lifetime) == ("websocket", 5, 600)


def test_unknown_fields_and_wrong_types_are_named():
    assert "language" in refused({"audio_base64": "AAAA", "language": "en"})
    assert "timestamps" in refused({"audio_base64": "AAAA", "timestamps": "yes"})
