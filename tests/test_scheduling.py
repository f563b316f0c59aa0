"""The fairness building blocks (no model): the engine's priority gate, the live pass budget, the
drain state and the metrics exposition."""

import asyncio
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from parakeet_worker.runtime import metrics
from parakeet_worker.runtime.lifecycle import Lifecycle
from parakeet_worker.runtime.scheduling import BATCH, STREAM, PassBudget, PriorityGate


def _wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_a_waiting_streaming_step_goes_before_a_batch_pass_that_waited_longer():
    gate = PriorityGate()
    order = []
    release = threading.Event()

    def holder():
        with gate.hold(BATCH):
            release.wait(10)

    def caller(name, prio):
        with gate.hold(prio):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    _wait_until(gate.locked)
    for name, prio in (("batch-1", BATCH), ("batch-2", BATCH)):
        threads.append(threading.Thread(target=caller, args=(name, prio)))
        threads[-1].start()
    _wait_until(lambda: gate._waiting[BATCH] == 2)
    threads.append(threading.Thread(target=caller, args=("stream", STREAM)))
    threads[-1].start()
    _wait_until(lambda: gate.streams_waiting == 1)
    release.set()
    for t in threads:
        t.join(10)
    assert order[0] == "stream", order
    assert sorted(order[1:]) == ["batch-1", "batch-2"]
    assert not gate.locked()


def test_gate_is_released_when_the_holder_raises():
    gate = PriorityGate()
    try:
        with gate.hold(STREAM):
            raise RuntimeError("model failed")
    except RuntimeError:
        pass
    assert not gate.locked()
    with gate.hold(BATCH):
        assert gate.locked()


def test_pass_budget_is_full_without_streams_and_follows_the_measured_rate_with_them():
    b = PassBudget(full_s=1200.0, target_s=0.5, min_s=10.0)
    assert b.audio_s() == 1200.0
    b.live_streams = 2
    assert b.audio_s() == 10.0  # nothing measured yet: the smallest window
    for _ in range(20):
        b.record(100.0, 1.0)  # 0.01 s of compute per audio second
    assert abs(b.audio_s() - 50.0) < 1.0  # 0.5 s of compute
    for _ in range(20):
        b.record(10.0, 10.0)  # a slow device: the floor holds
    assert b.audio_s() == 10.0
    b.live_streams = 0
    assert b.audio_s() == 1200.0


def test_drain_runs_each_callback_once_and_late_callbacks_at_once():
    lc = Lifecycle()
    calls = []
    lc.on_drain(lambda: calls.append("early"))
    assert not lc.draining
    assert lc.remaining(30.0) == 30.0  # not draining: the whole budget
    assert lc.begin_drain("SIGTERM") is True
    assert lc.begin_drain("SIGTERM") is False
    lc.on_drain(lambda: calls.append("late"))
    assert calls == ["early", "late"] and lc.draining and lc.reason == "SIGTERM"
    # the budget counts down from the first signal, and runs out
    lc.drain_started -= 12.0  # as if the signal had come 12 s ago
    assert 17.0 < lc.remaining(30.0) <= 18.0, lc.remaining(30.0)
    assert lc.remaining(10.0) == 0.0
    lc.reset()
    assert not lc.draining


def test_drain_callbacks_run_on_their_event_loop():
    lc = Lifecycle()

    async def main():
        fired = asyncio.Event()

        async def flush():
            fired.set()

        lc.on_drain(flush)
        threading.Thread(target=lc.begin_drain).start()  # as from a signal in another thread
        await asyncio.wait_for(fired.wait(), 10)

    asyncio.run(main())
    lc.reset()


def test_metrics_render_valid_exposition_with_the_documented_series():
    metrics.forward_pass("batch", 10.0, 0.5)
    metrics.stream_step(0.05, 0.96)
    metrics.error("invalid_audio")
    with metrics.JobRecord("job-1") as rec:
        rec.audio_s = 3.0
    names = {s.name for fam in text_string_to_metric_families(metrics.render().decode()) for s in fam.samples}
    for want in (
        "asr_active_sessions",
        "asr_jobs_queued",
        "asr_jobs_running",
        "asr_audio_seconds_total",
        "asr_real_time_factor",
        "asr_stream_step_seconds_bucket",
        "asr_errors_total",
        "asr_drains_total",
        "asr_engine_wait_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert want in names, want
