"""The one shared Parakeet engine: load once, warm up, transcribe batches, one model user at a time.

Everything that runs the model goes through ``Engine``: batch jobs (through the dynamic batcher,
which gathers requests that arrive together into one forward pass) and the streaming decoder's
steps (streaming.py). ``Engine.lock`` guarantees that no two callers use the model at the same time,
and lets a waiting streaming step go first; while streams are live, batch work runs in passes cut
to about one streaming step (``Engine.budget``, see scheduling.py).

Flow of one batch: pad signals -> preprocessor (fp32 mel) -> encoder (compute dtype) ->
TDT greedy decoding (label-looping, CUDA graphs on GPU; each utterance's hotwords fused in, see
hotwords.py) -> frame offsets to seconds -> Transcript.
Long audio runs in windows (long_audio.py); NeMo fixes the engine applies are in nemo_patches.py,
full/local attention switching in attention.py, device and precision choices in hardware.py. Out
of GPU memory a pass is retried smaller (``_recovering_pass``); only a clip that never fits fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import OUT_OF_MEMORY, ASRError, DeviceLost
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine import long_audio
from parakeet_worker.engine.attention import AttentionModes
from parakeet_worker.engine.batcher import DynamicBatcher, plan_groups
from parakeet_worker.engine.decoding import decode, offline_decoding_cfg
from parakeet_worker.engine.hotwords import Boosting, Hotwords, PerUtteranceBiasing, TreeCache
from parakeet_worker.engine.long_audio import BATCH_AUDIO_BUDGET_S
from parakeet_worker.engine.nemo_patches import compile_encoder, lean_subsampling_masks
from parakeet_worker.engine.transcript import Transcript, from_hypothesis
from parakeet_worker.engine.windows import LOCAL_WINDOW_OVERLAP_S
from parakeet_worker.runtime import hardware, lifecycle, metrics
from parakeet_worker.runtime.scheduling import BATCH, STREAM, PassBudget, PriorityGate

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the engine
class Engine:
    def __init__(self, settings: Settings, model=None):
        """``settings`` come from the caller (``Settings.from_env()`` in the entry points);
        ``model``: an already loaded model (tests, benchmarks), else ``settings.model`` is loaded."""
        self.settings = s = settings
        self.model_name = s.model_id  # what responses name (never a path)
        if model is None:
            from parakeet_worker.engine.model_loader import load_model  # NeMo is imported only here

            model = load_model(s.model, s.device or None, s.model_cache_dir)
        self.model = model
        self.device = next(self.model.parameters()).device
        self.dtype = hardware.compute_dtype(self.device, s.precision)
        self.lock = PriorityGate()  # one model user at a time; a waiting streaming step goes first
        # while streams are live, a batch pass holds about one streaming step's compute
        self.budget = PassBudget(BATCH_AUDIO_BUDGET_S, s.live_batch_pass_s, s.live_min_window_s)
        self.attn = AttentionModes(self.model.encoder, s.local_attention_context)
        self.frame_seconds = self.model.cfg.preprocessor.window_stride * self.model.encoder.subsampling_factor
        self._checkpoint_decoding = self.model.cfg.decoding.copy()  # as trained; streaming set-up overwrites cfg
        self._stream_pipelines: dict = {}  # StreamConfig -> NeMo pipeline on this model (stream_pipeline())
        self._pipelines_lock = threading.Lock()
        self.stats = {"oom": 0, "oom_split": 0, "oom_local": 0, "oom_failed": 0, "graph_resets": 0}
        self.lost = ""  # why the GPU is unusable (a non-OOM CUDA error); "" while it is fine
        lean_subsampling_masks(self.model)
        self.hotword_trees = TreeCache(self.model.tokenizer)
        self.reconfigure()
        if s.compile:
            compile_encoder(self.model.encoder)
        self.full_attention_limit_s = self._full_attention_limit()
        self._batcher = DynamicBatcher(self._run_batch, s.max_batch_size, s.max_batch_wait_ms / 1000.0)
        self.ready = False
        self.warmup_report: dict = {}
        if s.warmup:
            self.warmup()
        self.ready = True
        log.info(
            "engine on %s; full attention up to %.0f s",
            hardware.describe(self.device, self.dtype),
            self.full_attention_limit_s,
        )

    @property
    def attention(self) -> str:
        return self.attn.current

    # ---- set-up
    def reconfigure(self) -> None:
        """Apply the offline set-up: eval mode, SDPA, encoder dtype, decoding with timestamps and
        confidence. Also re-applied after the streaming pipeline, which resets decoding, is built."""
        m = self.model
        m.eval()
        self._use_sdpa()
        m.encoder.to(self.dtype)  # the mel front end, decoder and joint stay fp32 (see _model_pass)
        dec = offline_decoding_cfg(self._checkpoint_decoding, self.settings.cuda_graphs and self.device.type == "cuda")
        m.change_decoding_strategy(dec, verbose=False)
        greedy = m.decoding.decoding
        greedy.decoding_computer = PerUtteranceBiasing(greedy.decoding_computer)
        m.eval()
        # a decoding change after a capture must not leave any graph captured against the old
        # set-up: every computer re-captures on its next call (docs/GPU.md)
        self.reset_decoder_graphs()

    def decoding_computers(self) -> list:
        """Every label-looping decoding computer on this model: the offline one (unwrapped) and
        each streaming pipeline's. Each owns its CUDA graphs and the buffers they reference."""
        offline = self.model.decoding.decoding.decoding_computer
        comps = [getattr(offline, "computer", offline)]
        comps += [p.decoding_computer for p in self._stream_pipelines.values() if p.decoding_computer is not None]
        return comps

    def reset_decoder_graphs(self) -> None:
        """Drop every captured decoder graph (each re-captures on its next call). Done before the
        allocator's cache is released (OOM recovery) and after a decoding change: a graph replays
        fixed addresses, so nothing it references may be freed or replaced while it lives."""
        for comp in self.decoding_computers():
            if getattr(comp, "state", None) is not None and hasattr(comp, "reset_cuda_graphs_state"):
                comp.reset_cuda_graphs_state()
                self.stats["graph_resets"] += 1

    def _use_sdpa(self, on: bool = True) -> None:
        """PyTorch SDPA kernels (flash / memory-efficient on GPU) for full attention (the attached
        modules); NeMo reads the flag at forward time. Local attention's modules keep theirs off
        (attention.py). ``on=False``: NeMo's own attention arithmetic (bench/gpu_levers.py)."""
        for mod in self.model.encoder.modules():
            if hasattr(mod, "use_pytorch_sdpa"):
                mod.use_pytorch_sdpa = on

    @property
    def decode_dtype(self) -> torch.dtype:
        """What the decoder and joint compute in (their parameters' dtype: fp32)."""
        return next(self.model.joint.parameters()).dtype

    def _full_attention_limit(self) -> float:
        """Longest clip that runs with full attention. LOCAL_ATTENTION_THRESHOLD_S if set; else on
        a GPU what its free memory holds by the T^2 law (hardware.py), capped at NVIDIA's 24 min."""
        s = self.settings
        if s.local_attention_threshold_s > 0:
            return s.local_attention_threshold_s
        free = hardware.free_device_memory(self.device)
        if free is None:
            return hardware.MAX_FULL_ATTENTION_S
        fit = hardware.full_attention_limit_s(free, self.frame_seconds, s.full_attention_bytes_per_frame2)
        return max(60.0, min(fit, hardware.MAX_FULL_ATTENTION_S))

    def stream_pipeline(self, config):
        """NeMo's streaming pipeline on this model, built once per streaming config (warmup builds
        the settings' one at start-up, so the first WebSocket client does not wait for it)."""
        with self._pipelines_lock:
            if config not in self._stream_pipelines:
                from parakeet_worker.engine.stream_pipeline import build_pipeline  # not in a batch-only worker

                self._stream_pipelines[config] = build_pipeline(self, config)
            return self._stream_pipelines[config]

    def warmup(self) -> dict:
        """Run every shape production uses once (warmup.py says which, and in what order)."""
        from parakeet_worker.engine.warmup import warm_up

        self.warmup_report = warm_up(self)
        return self.warmup_report

    # ---- model access (callers hold no lock; these take it)
    @contextlib.contextmanager
    def exclusive(self, attention: str = "full", priority: int = BATCH):
        """Hold the model, in eval mode, with the requested attention, and restore full attention.
        ``priority``: ``scheduling.STREAM`` for streaming steps (they go first).

        Every use of the model passes here, so this is where a lost GPU is noticed: a non-OOM
        CUDA error marks the engine (and the process, lifecycle.poison) as lost, and every later
        caller gets ``DeviceLost`` at once instead of a second crash or a hang."""
        self._check_device()
        with self.lock.hold(priority):
            self._check_device()  # lost while this caller waited
            self.model.eval()
            try:
                with self.attn.using(attention):  # attention.py: a reference swap, exception-safe
                    yield self.model
            except Exception as exc:
                if hardware.is_device_lost(exc):
                    self.device_lost(exc)
                raise
            finally:
                self.model.eval()

    def _check_device(self) -> None:
        if self.lost:
            raise DeviceLost(f"the GPU is unusable ({self.lost})")

    def device_lost(self, exc: BaseException) -> None:
        """The GPU failed for good: remember it, and tell the process (lifecycle.poison)."""
        if not self.lost:
            self.lost = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            lifecycle.LIFECYCLE.poison(self.lost)

    def transcribe_batch(
        self, signals: list[np.ndarray], attention: str = "full", boostings: list[Boosting | None] | None = None
    ) -> list[Transcript | ASRError]:
        """Transcribe 16 kHz float32 signals in one forward pass (synchronous, takes the lock).
        ``boostings``: each signal's hotwords (``hotword_trees.boosting``), or None.

        Out of GPU memory, the pass is retried as two halves, a single clip with local attention,
        and only a clip that fails even so gets ``ASRError(out_of_memory)`` in its place: the
        other clips of the batch are transcribed."""
        if not signals:
            return []
        boostings = boostings or [None] * len(signals)
        lens = [len(s) for s in signals]
        out: list[Transcript | ASRError | None] = [None] * len(signals)
        live = [i for i, n in enumerate(lens) if n >= SAMPLE_RATE // 10]  # < 0.1 s: nothing to hear
        for i in set(range(len(signals))) - set(live):
            out[i] = Transcript("", lens[i] / SAMPLE_RATE, attention=attention)
        done = self._recovering_pass([signals[i] for i in live], attention, [boostings[i] for i in live])
        for i, t in zip(live, done):
            out[i] = t
        return out  # type: ignore[return-value]

    def _recovering_pass(
        self, signals: list[np.ndarray], attention: str, boostings: list[Boosting | None]
    ) -> list[Transcript | ASRError]:
        if not signals:
            return []
        try:
            return self._pass(signals, attention, boostings)
        except torch.OutOfMemoryError:
            pass  # recover outside the handler: its traceback holds the failed pass's tensors
        self.stats["oom"] += 1
        self.free_memory()
        longest = max(len(x) for x in signals) / SAMPLE_RATE
        if len(signals) > 1:
            self.stats["oom_split"] += 1
            log.warning("out of memory on %d clips (longest %.0f s): retrying as two halves", len(signals), longest)
            half = len(signals) // 2
            return self._recovering_pass(signals[:half], attention, boostings[:half]) + self._recovering_pass(
                signals[half:], attention, boostings[half:]
            )
        if attention == "full":
            self.stats["oom_local"] += 1
            log.warning("out of memory on one %.0f s clip with full attention: retrying with local attention", longest)
            return self._recovering_pass(signals, "local", boostings)
        self.stats["oom_failed"] += 1
        log.error("out of memory on one %.0f s clip even with local attention", longest)
        return [
            ASRError(
                OUT_OF_MEMORY,
                f"a {longest:.0f} s clip does not fit in GPU memory even with local "
                "attention; send it with chunk_long_audio or a shorter chunk_duration",
            )
        ]

    def free_memory(self) -> None:
        """After an OOM: give the allocator's cached blocks back. Captured graphs are dropped
        first (they re-capture on their next call): releasing memory a live graph still
        addresses is what crashed the first GPU run's OOM recovery (docs/GPU.md)."""
        import gc

        with self.lock.hold(STREAM):  # no step or pass may replay a graph while they are dropped
            if self.device.type == "cuda":
                self.reset_decoder_graphs()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _pass(self, signals: list[np.ndarray], attention: str, boostings: list[Boosting | None]) -> list[Transcript]:
        lens = [len(x) for x in signals]
        batch = torch.zeros(len(signals), max(lens))
        for j, x in enumerate(signals):
            batch[j, : lens[j]] = torch.from_numpy(np.asarray(x, dtype=np.float32))
        with self.exclusive(attention) as m:
            hyps = self._model_pass(m, batch, torch.tensor(lens), boostings)
        return [from_hypothesis(h, n / SAMPLE_RATE, attention) for h, n in zip(hyps, lens)]

    def _model_pass(self, m, batch: torch.Tensor, length: torch.Tensor, boostings: list[Boosting | None]):
        """Preprocessor (fp32), encoder (compute dtype, under autocast) and TDT decoding over one
        padded batch: hypotheses with word times.

        The encoder output is cast to the decoder/joint's dtype before decoding: NeMo's CUDA-graph
        decoder turns autocast off, and its joint would then multiply a bf16 encoder output with
        fp32 weights ("mat1 and mat2 must have the same dtype")."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32
            else contextlib.nullcontext()
        )
        t0 = time.perf_counter()
        with torch.inference_mode():
            batch, length = batch.to(self.device), length.to(self.device)
            feats, feat_len = m.preprocessor(input_signal=batch, length=length)
            with autocast:
                enc, enc_len = m.encoder(audio_signal=feats.to(self.dtype), length=feat_len)
            hyps = decode(m, enc.to(self.decode_dtype), enc_len, boostings)
        took, padded_s = time.perf_counter() - t0, batch.numel() / SAMPLE_RATE
        self.budget.record(padded_s, took)  # what one second of padded audio costs on this device
        metrics.forward_pass("batch", float(length.sum()) / SAMPLE_RATE, took)
        return hyps

    # ---- the async entry point
    async def transcribe(
        self,
        signal: np.ndarray,
        *,
        use_local_attention: bool = False,
        chunk_long_audio: bool = False,
        chunk_duration: float = 30.0,
        hotwords: Hotwords | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Transcribe one signal. Short audio goes through the dynamic batcher; long audio gets
        local attention (above the threshold, or when asked) or is chunked (``chunk_long_audio``:
        windows of ``chunk_duration`` s); both run in windows
        merged at pauses, so memory is that of one window whatever the duration.
        ``hotwords``: boosted in decoding (their tree is built off the lock, once per distinct list).
        ``on_progress(fraction)`` is called after each window of a long job."""
        duration = len(signal) / SAMPLE_RATE
        limit = self.full_attention_limit_s
        boosting = None
        if hotwords:
            with self._batcher.request_arriving():  # a batch about to close waits for this job
                boosting = await self.boosting(hotwords)
        if chunk_long_audio and duration > chunk_duration:
            # chunks longer than full attention fits run with local attention
            attention = "local" if use_local_attention or chunk_duration > limit else "full"
            return await long_audio.transcribe_windows(
                self, signal, chunk_duration, None, attention, on_progress, boosting
            )
        if use_local_attention or duration > limit:
            return await long_audio.transcribe_windows(
                self,
                signal,
                self.settings.local_attention_window_s,
                LOCAL_WINDOW_OVERLAP_S,
                "local",
                on_progress,
                boosting,
            )
        if self.budget.live and duration > self.budget.audio_s():
            # a stream is live: short windows through the batcher, so neither the stream nor the
            # short jobs queued behind this one wait for one long pass
            return await long_audio.transcribe_windows(
                self, signal, self.budget.audio_s(), None, "full", on_progress, boosting
            )
        return await self._batcher.submit((signal, boosting))

    async def boosting(self, hotwords: Hotwords | None) -> Boosting | None:
        """``hotwords`` as a decoding tree, built off the loop (cached per list); None for none."""
        return await asyncio.to_thread(self.hotword_trees.boosting, hotwords) if hotwords else None

    def submit(self, signal: np.ndarray, boosting: Boosting | None = None):
        """One clip to the dynamic batcher (an awaitable of its Transcript)."""
        return self._batcher.submit((signal, boosting))

    @property
    def batch_size(self) -> int:
        return self._batcher.max_size

    def request_arriving(self):
        """Wrap a request's audio decoding: see ``DynamicBatcher.request_arriving``."""
        return self._batcher.request_arriving()

    def _run_batch(self, items: list[tuple[np.ndarray, Boosting | None]], deliver=None) -> list[Transcript | Exception]:
        """One batcher call of (signal, boosting) items: sorted by length and split so that no
        forward pass holds more than the pass budget of padded audio (BATCH_AUDIO_BUDGET_S; about
        one streaming step's compute while streams are live), nor pads its clips to more than
        ``max_padding_ratio`` times their real length (one long file is not padded against 15 short
        ones). Hotwords never split a batch: each utterance brings its own. A failed pass is retried
        clip by clip, so only the clip that fails gets the error."""
        signals = [s for s, _ in items]
        out: list[Transcript | Exception | None] = [None] * len(signals)
        groups = plan_groups(
            [len(x) for x in signals], self.budget.audio_s() * SAMPLE_RATE, self.settings.max_padding_ratio
        )
        for group in groups:
            for k, t in zip(group, self._run_group([signals[k] for k in group], [items[k][1] for k in group])):
                out[k] = t
                if deliver:  # short clips answer as soon as their group is done
                    deliver(k, t)
        return out  # type: ignore[return-value]

    def _run_group(self, signals: list[np.ndarray], boostings: list) -> list[Transcript | Exception]:
        """One group of the batcher: one pass, or windows of the live budget for a clip longer than
        it while streams are live; on failure, each clip alone (the failing one keeps its error)."""
        try:
            if len(signals) == 1 and self.budget.live and len(signals[0]) > self.budget.audio_s() * SAMPLE_RATE:
                return [long_audio.run_windows(self, signals[0], "full", boostings[0], self.budget.audio_s())]
            return self.transcribe_batch(signals, "full", boostings)
        except Exception as exc:  # noqa: BLE001 - isolate: the other clips of the group may be fine
            if hardware.is_device_lost(exc):
                raise  # nothing can run any more: no clip-by-clip retry
            if len(signals) == 1:
                log.warning("a %.1f s clip failed in the model: %s", len(signals[0]) / SAMPLE_RATE, type(exc).__name__)
                return [exc]
            log.warning("a pass over %d clips failed (%s): retrying them one by one", len(signals), type(exc).__name__)
            return [self._run_group([x], [b])[0] for x, b in zip(signals, boostings)]
