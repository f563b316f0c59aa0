"""Names that explain themselves, old names still accepted: the server's address and token
variables, the decoder's step, and the start message's partial interval."""

import asyncio
import json

import pytest

from parakeet_worker.config.settings import Settings
from tests.helpers import WorkerThread, requires_model


@pytest.mark.parametrize(
    "env, field, value",
    [
        ({"LISTEN_PORT": "9001", "WS_PORT": "9002", "PORT": "9003"}, "listen_port", 9001),
        ({"WS_PORT": "9002", "PORT": "9003"}, "listen_port", 9002),
        ({"PORT": "9003"}, "listen_port", 9003),
        ({"LISTEN_HOST": "127.0.0.1", "WS_HOST": "::1"}, "listen_host", "127.0.0.1"),
        ({"WS_HOST": "::1"}, "listen_host", "::1"),
        ({"AUTH_TOKEN": "new", "WS_AUTH_TOKEN": "old"}, "auth_token", "new"),
        ({"WS_AUTH_TOKEN": "old"}, "auth_token", "old"),
        ({"STREAM_STEP_S": "0.16", "STREAM_CHUNK_S": "0.96"}, "stream_step_s", 0.16),
        ({"STREAM_CHUNK_S": "0.96"}, "stream_step_s", 0.96),
    ],
)
def test_new_names_win_and_old_names_still_work(env, field, value):
    assert getattr(Settings.from_env(env), field) == value


@pytest.fixture(scope="module")
def worker(tiny_model):
    from parakeet_worker.engine.engine import Engine

    w = WorkerThread(Engine(Settings(model="tiny", warmup=False), model=tiny_model))
    yield w
    w.stop()


@requires_model
def test_start_takes_partial_interval_or_its_older_name(worker):
    from websockets.asyncio.client import connect

    async def start(fields: dict) -> dict:
        async with connect(worker.url) as ws:
            json.loads(await ws.recv())  # welcome
            await ws.send(json.dumps({"action": "start", **fields}))
            return json.loads(await ws.recv())

    async def all_three():
        cases = [{"partial_interval": 0.5}, {"chunk_duration": 1.5}, {"partial_interval": 0.5, "chunk_duration": 1.5}]
        return await asyncio.wait_for(asyncio.gather(*(start(c) for c in cases)), 60)

    new, old, both = asyncio.run(all_three())
    assert new["type"] == "started" and new["partial_interval"] == 0.5 == new["chunk_duration"]
    assert old["type"] == "started" and old["partial_interval"] == 1.5
    assert both["type"] == "error" and both["code"] == "invalid_input" and "not both" in both["message"]
