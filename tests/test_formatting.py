"""Transcript -> job output: the JSON shape per output_format and the subtitle clocks."""

import pytest

from parakeet_worker.engine.transcript import Segment, Transcript, Word, make_segments
from parakeet_worker.serving.formatting import _clock, job_output, to_srt, to_vtt

WORDS = [Word("Hello", 0.08, 0.4, 0.91), Word("world.", 0.5, 0.9, 0.8), Word("Again", 2.0, 2.5, None)]
TRANSCRIPT = Transcript("Hello world. Again", 3.2, WORDS, make_segments(WORDS))


@pytest.mark.parametrize(
    ("seconds", "sep", "clock"),
    [
        (0.0, ",", "00:00:00,000"),
        (3661.5, ",", "01:01:01,500"),
        (59.9996, ".", "00:01:00.000"),  # rounds to the millisecond, carrying into the minutes
        (-0.2, ".", "00:00:00.000"),  # never negative
        (36000.001, ",", "10:00:00,001"),
    ],
)
def test_clock(seconds, sep, clock):
    assert _clock(seconds, sep) == clock


def test_segments_split_at_sentence_ends_and_pauses():
    assert TRANSCRIPT.segments == [Segment(0.08, 0.9, "Hello world."), Segment(2.0, 2.5, "Again")]


def test_srt_and_vtt():
    assert to_srt(TRANSCRIPT.segments) == (
        "1\n00:00:00,080 --> 00:00:00,900\nHello world.\n\n2\n00:00:02,000 --> 00:00:02,500\nAgain\n"
    )
    assert to_vtt(TRANSCRIPT.segments) == (
        "WEBVTT\n\n00:00:00.080 --> 00:00:00.900\nHello world.\n\n00:00:02.000 --> 00:00:02.500\nAgain\n"
    )
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"


def out(output_format="json", timestamps=True):
    return job_output(
        TRANSCRIPT, timestamps=timestamps, output_format=output_format, model="m", processing_time=0.12345
    )


def test_json_output_has_words_and_segments():
    o = out()
    assert o == {
        "text": "Hello world. Again",
        "duration": 3.2,
        "processing_time": 0.123,
        "segments": [{"start": 0.08, "end": 0.9, "text": "Hello world."}, {"start": 2.0, "end": 2.5, "text": "Again"}],
        "words": [
            {"word": "Hello", "start": 0.08, "end": 0.4, "confidence": 0.91},
            {"word": "world.", "start": 0.5, "end": 0.9, "confidence": 0.8},
            {"word": "Again", "start": 2.0, "end": 2.5, "confidence": None},
        ],
        "model": "m",
        "attention": "full",
        "chunks": 1,
    }
    assert list(o)[-3:] == ["model", "attention", "chunks"]


def test_text_output_and_no_timestamps_drop_words_and_segments():
    base = {
        "text": "Hello world. Again",
        "duration": 3.2,
        "processing_time": 0.123,
        "model": "m",
        "attention": "full",
        "chunks": 1,
    }
    assert out("text") == base
    assert out("json", timestamps=False) == base


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_output_adds_its_own_key(fmt):
    o = out(fmt)
    assert o[fmt] == (to_srt if fmt == "srt" else to_vtt)(TRANSCRIPT.segments)
    assert {"segments", "words"} <= set(o) and ({"srt", "vtt"} - {fmt}).isdisjoint(o)
