"""The one shared Parakeet engine: load once, warm up, transcribe batches, one model user at a time.

Everything that runs the model goes through ``Engine``: batch jobs (through the dynamic batcher,
which gathers requests that arrive together into one forward pass) and, later, streaming steps.
``Engine.lock`` guarantees that no two callers use the model at the same time.

Flow of one batch: pad signals -> preprocessor (fp32 mel) -> encoder (compute dtype) ->
TDT greedy decoding (label-looping, CUDA graphs on GPU) -> frame offsets to seconds -> Transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from settings import Settings

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"
SAMPLE_RATE = 16000
BATCH_AUDIO_BUDGET_S = 1200.0  # padded seconds of audio in one forward pass
INCOMING_WAIT_S = 0.05  # longest extra wait for requests still decoding (DynamicBatcher.expecting)
LOCAL_WINDOW_OVERLAP_S = 16.0  # local-attention windows overlap by more than the attention reach (10 s)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# results
@dataclass
class Word:
    word: str
    start: float
    end: float
    confidence: float | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    duration: float
    words: list[Word] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    attention: str = "full"  # "full" or "local"
    chunks: int = 1
    # A merged long job keeps its windows' own transcripts (times relative to each window) for
    # diagnostics such as the seam check in bench/long_audio_bench.py; never in the job output.
    parts: list["Transcript"] = field(default_factory=list, repr=False, compare=False)


# ---------------------------------------------------------------------------------------------
# loading
def pick_device(requested: str | None = None) -> torch.device:
    """``cuda`` when present unless told otherwise (``DEVICE=cpu``)."""
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(name_or_path: str | None = None, device: str | None = None, cache_dir: str | None = None):
    """Load a NeMo ASR model (Hugging Face id, ``.nemo`` file or extracted folder), in eval mode.

    ``cache_dir`` (default ``PARAKEET_MODEL_CACHE``) holds models unpacked at image build time:
    see ``model_loader`` for why a restore from there starts faster.
    """
    import model_loader

    s = Settings.from_env()
    name = name_or_path or s.model
    dev = pick_device(device)
    model = model_loader.restore(name, dev, s.model_cache_dir if cache_dir is None else cache_dir)
    model = model.to(dev).eval()
    log.info("loaded %s on %s", name, dev)
    return model


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision in ("bf16", "auto") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if precision == "auto" else torch.float32


# ---------------------------------------------------------------------------------------------
# the engine
class Engine:
    def __init__(self, settings: Settings | None = None, model=None):
        self.settings = settings or Settings.from_env()
        s = self.settings
        self.model_name = s.model
        self.model = model if model is not None else load_model(s.model, s.device or None)
        self.device = next(self.model.parameters()).device
        self.dtype = compute_dtype(self.device, s.precision)
        self.lock = threading.Lock()  # one model user at a time: batch jobs and streaming steps
        self.frame_seconds = self.model.cfg.preprocessor.window_stride * self.model.encoder.subsampling_factor
        self.attention = "full"
        self._param_names = {name for name, _ in self.model.named_parameters()}
        self._checkpoint_decoding = self.model.cfg.decoding.copy()  # as trained; streaming set-up overwrites cfg
        lean_subsampling_masks(self.model)
        self.reconfigure()
        if s.compile and self.device.type == "cuda":
            self.model.encoder.forward = torch.compile(self.model.encoder.forward, dynamic=True)
        self._batcher = DynamicBatcher(self._run_batch, s.max_batch_size, s.max_batch_wait_ms / 1000.0)
        self.ready = False
        if s.warmup:
            self.warmup()
        self.ready = True

    # ---- set-up
    def reconfigure(self) -> None:
        """Apply the offline set-up: eval mode, SDPA, encoder dtype, decoding with timestamps and
        confidence. Also re-applied after the streaming pipeline, which resets decoding, is built."""
        from omegaconf import open_dict

        m = self.model
        m.eval()
        self._use_sdpa(True)
        m.encoder.to(self.dtype)  # the mel front end stays fp32; decoder/joint run under autocast
        dec = self._checkpoint_decoding.copy()
        with open_dict(dec):
            dec.strategy = "greedy_batch"
            dec.compute_timestamps = True  # always: a request without timestamps just drops them
            dec.greedy.use_cuda_graph_decoder = bool(self.settings.cuda_graphs and self.device.type == "cuda")
            dec.confidence_cfg = {
                "preserve_frame_confidence": True, "preserve_token_confidence": True,
                "preserve_word_confidence": True, "exclude_blank": True, "aggregation": "min",
                "method_cfg": {"name": "max_prob"},
            }
        m.change_decoding_strategy(dec, verbose=False)
        m.eval()

    def _use_sdpa(self, on: bool) -> None:
        """PyTorch SDPA kernels (flash / memory-efficient on GPU) for full attention; NeMo reads
        the flag at forward time, and the encoder's copy when it rebuilds attention layers."""
        for mod in self.model.modules():
            if hasattr(mod, "use_pytorch_sdpa"):
                mod.use_pytorch_sdpa = on

    def warmup(self) -> float:
        """One pass over a short noise clip, so the first request costs what the rest do
        (allocator, kernels, CUDA graphs, compile)."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        clips = [(rng.standard_normal(SAMPLE_RATE * 2) * 0.01).astype(np.float32)] * min(2, self.settings.max_batch_size)
        self.transcribe_batch(clips)
        took = time.perf_counter() - t0
        log.info("warmup took %.2f s", took)
        return took

    # ---- model access (callers hold no lock; these take it)
    @contextlib.contextmanager
    def exclusive(self, attention: str = "full"):
        """Hold the model, in eval mode, with the requested attention, and restore full attention."""
        with self.lock:
            self.model.eval()
            if attention != self.attention:
                self._set_attention(attention)
            try:
                yield self.model
            finally:
                if self.attention != "full":
                    self._set_attention("full")
                self.model.eval()

    def _set_attention(self, attention: str) -> None:
        ctx = self.settings.local_attention_context
        self._use_sdpa(False)  # NeMo's local (Longformer-style) attention has no SDPA path
        if attention == "local":
            self.model.change_attention_model("rel_pos_local_attn", [ctx, ctx], update_config=False)
        else:
            self.model.change_attention_model("rel_pos", [-1, -1], update_config=False)
            self._use_sdpa(True)
        # NeMo 3.0 builds the new attention layers with biases even when the encoder has
        # use_bias=False (parakeet's case) and loads the old weights non-strictly, so those biases
        # start random and would change every later request. A missing bias is a zero bias.
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name not in self._param_names and name.endswith(".bias"):
                    p.zero_()
        self.model.encoder.to(self.dtype)
        self.attention = attention

    def transcribe_batch(self, signals: list[np.ndarray], attention: str = "full") -> list[Transcript]:
        """Transcribe 16 kHz float32 signals in one forward pass (synchronous, takes the lock)."""
        if not signals:
            return []
        lens = [len(s) for s in signals]
        out: list[Transcript | None] = [None] * len(signals)
        live = [i for i, n in enumerate(lens) if n >= SAMPLE_RATE // 10]  # < 0.1 s: nothing to hear
        for i in set(range(len(signals))) - set(live):
            out[i] = Transcript("", lens[i] / SAMPLE_RATE, attention=attention)
        if live:
            batch = torch.zeros(len(live), max(lens[i] for i in live))
            for j, i in enumerate(live):
                batch[j, : lens[i]] = torch.from_numpy(np.asarray(signals[i], dtype=np.float32))
            length = torch.tensor([lens[i] for i in live])
            with self.exclusive(attention) as m:
                hyps = self._forward(m, batch, length)
            for j, i in enumerate(live):
                out[i] = self._to_transcript(hyps[j], lens[i] / SAMPLE_RATE, attention)
        return out  # type: ignore[return-value]

    def _forward(self, m, batch: torch.Tensor, length: torch.Tensor):
        from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

        autocast = (torch.autocast("cuda", dtype=self.dtype) if self.dtype != torch.float32
                    else contextlib.nullcontext())
        with torch.inference_mode():
            batch, length = batch.to(self.device), length.to(self.device)
            feats, feat_len = m.preprocessor(input_signal=batch, length=length)
            with autocast:
                enc, enc_len = m.encoder(audio_signal=feats.to(self.dtype), length=feat_len)
                hyps = m.decoding.rnnt_decoder_predictions_tensor(
                    encoder_output=enc, encoded_lengths=enc_len, return_hypotheses=True)
        return process_timestamp_outputs(hyps, m.encoder.subsampling_factor, m.cfg.preprocessor.window_stride)

    def _to_transcript(self, hyp, duration: float, attention: str) -> Transcript:
        raw = hyp.timestamp.get("word", []) if isinstance(hyp.timestamp, dict) else []
        conf = list(getattr(hyp, "word_confidence", None) or [])
        words, last = [], 0.0
        for k, w in enumerate(raw):
            # clamp into [0, duration] and keep starts monotone; TDT frames are 80 ms
            start = min(max(float(w["start"]), last), duration)
            end = min(max(float(w["end"]), start), duration)
            c = float(conf[k]) if k < len(conf) else None
            words.append(Word(str(w["word"]), round(start, 3), round(end, 3), None if c is None else round(c, 4)))
            last = start
        text = hyp.text if isinstance(hyp.text, str) else " ".join(w.word for w in words)
        return Transcript(text.strip(), round(duration, 3), words, make_segments(words), attention)

    # ---- the async entry point
    async def transcribe(self, signal: np.ndarray, *, use_local_attention: bool = False,
                         chunk_long_audio: bool = False, chunk_duration: float = 30.0,
                         on_progress: Callable[[float], None] | None = None) -> Transcript:
        """Transcribe one signal. Short audio goes through the dynamic batcher; long audio gets
        local attention (above the threshold, or when asked) or is chunked; both run in windows
        merged at pauses, so memory is that of one window whatever the duration.
        ``on_progress(fraction)`` is called after each window of a long job."""
        duration = len(signal) / SAMPLE_RATE
        if chunk_long_audio and duration > chunk_duration:
            attention = "local" if use_local_attention else "full"
            return await self._transcribe_windows(signal, chunk_duration, None, attention, on_progress)
        if use_local_attention or duration > self.settings.local_attention_threshold_s:
            return await self._transcribe_windows(signal, self.settings.local_attention_window_s,
                                                  LOCAL_WINDOW_OVERLAP_S, "local", on_progress)
        return await self._batcher.submit(signal)

    async def _transcribe_windows(self, signal: np.ndarray, window_s: float, overlap_s: float | None,
                                  attention: str, on_progress) -> Transcript:
        duration = len(signal) / SAMPLE_RATE
        spans = chunk_spans(duration, window_s, overlap_s)
        pieces = [signal[int(a * SAMPLE_RATE): int(b * SAMPLE_RATE)] for a, b in spans]
        results: list[Transcript] = []
        pending: list[asyncio.Future] = []
        try:
            if attention == "full":
                # Through the batcher one batch-full at a time: jobs that arrive meanwhile are
                # queued before the next wave, so a 3 h file does not hold up a 3 s one.
                wave = self._batcher.max_size
                for k in range(0, len(pieces), wave):
                    pending = [asyncio.ensure_future(self._batcher.submit(p)) for p in pieces[k: k + wave]]
                    for fut in pending:
                        results.append(await fut)
                        if on_progress:
                            on_progress(spans[len(results) - 1][1] / duration)
            else:
                # Local attention runs off the batcher, a few windows per forward (bounded audio).
                per_pass = max(1, min(self.settings.max_batch_size, int(BATCH_AUDIO_BUDGET_S // window_s)))
                for k in range(0, len(pieces), per_pass):
                    results += await asyncio.to_thread(self.transcribe_batch, pieces[k: k + per_pass], "local")
                    if on_progress:
                        on_progress(spans[len(results) - 1][1] / duration)
        finally:
            for fut in pending:  # a cancelled job leaves nothing queued behind it
                fut.cancel()
        merged = results[0] if len(results) == 1 else merge_chunks(spans, results)
        if len(results) > 1:
            merged.parts = results
        merged.duration = round(duration, 3)
        merged.attention = attention
        return merged

    def expecting(self):
        """Wrap a request's audio decoding: see ``DynamicBatcher.expecting``."""
        return self._batcher.expecting()

    def _run_batch(self, signals: list[np.ndarray], deliver=None) -> list[Transcript]:
        """One batcher call: sorted by length and split so that no forward pass holds more than
        BATCH_AUDIO_BUDGET_S of padded audio, nor pads its clips to more than ``max_padding_ratio``
        times their real length (one long file is not padded against 15 short ones)."""
        order = sorted(range(len(signals)), key=lambda i: len(signals[i]))
        out: list[Transcript | None] = [None] * len(signals)
        group: list[int] = []
        real = 0  # samples of real audio in the group
        for i in order + [None]:
            if i is not None:
                n = len(signals[i])
                padded = n * (len(group) + 1)  # sorted: the newcomer is the longest
                if not group or (padded <= BATCH_AUDIO_BUDGET_S * SAMPLE_RATE
                                 and padded <= self.settings.max_padding_ratio * (real + n)):
                    group.append(i)
                    real += n
                    continue
            for k, t in zip(group, self.transcribe_batch([signals[k] for k in group], "full")):
                out[k] = t
                if deliver:  # short clips answer as soon as their group is done
                    deliver(k, t)
            group, real = ([i], len(signals[i])) if i is not None else ([], 0)
        return out  # type: ignore[return-value]

# ---------------------------------------------------------------------------------------------
# leaner padding masks in the subsampling convolutions (bench/profile_bench.py: 16% of a CPU batch)
def lean_subsampling_masks(model) -> int:
    """Give the encoder's masked subsampling convolutions (NeMo 3.0's MaskedConvSequential) a
    forward with the same output and fewer passes over the activations. NeMo zeroes padded frames
    before every layer; only layers that mix neighbouring frames need those zeros, the final
    mask zeroes the padded outputs as before, and on CPU an unpadded batch needs no mask at all.
    Returns how many modules were changed (0 on NeMo versions without that class)."""
    import types

    try:
        from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential
    except ImportError:
        return 0
    changed = 0
    for mod in model.modules():
        if isinstance(mod, MaskedConvSequential):
            mod.forward = types.MethodType(_masked_conv_forward, mod)
            changed += 1
    return changed


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    time = x.shape[2]  # (batch, channels, time, features)
    if not x.is_cuda and bool((lengths >= time).all()):  # nothing padded (a GPU sync is not worth it)
        return x
    keep = torch.arange(time, device=x.device)[None, :] < lengths[:, None]
    return x * keep[:, None, :, None].to(x.dtype)


def _masked_conv_forward(self, x: torch.Tensor, lengths: torch.Tensor):
    from nemo.collections.asr.parts.submodules.subsampling import calculate_conv_output_size

    x = x.unsqueeze(1)  # (batch, 1, time, features)
    current = lengths.clone().float()  # NeMo's length arithmetic, kept identical
    for layer in self:
        if getattr(layer, "kernel_size", (1,))[0] > 1:  # mixes neighbouring frames: padding must be zero
            x = _zero_padding(x, current.long())
        x = layer(x)
        if getattr(layer, "stride", (1, 1)) != (1, 1):
            padding = (layer._left_padding, layer._right_padding) if hasattr(layer, "_left_padding") else layer.padding
            current = calculate_conv_output_size(current, layer.kernel_size[0], layer.stride[0], padding)
    return _zero_padding(x, current.long()), current.long()


# ---------------------------------------------------------------------------------------------
# dynamic batching
class DynamicBatcher:
    """Gathers requests that arrive within ``max_wait`` seconds (up to ``max_size``) into one call
    of ``run_batch(items, deliver)`` in a worker thread, so the event loop keeps serving while the
    model runs. ``run_batch`` may call ``deliver(index, result)`` as soon as one item is done (a
    batch can take several forward passes); whatever it returns settles the rest."""

    def __init__(self, run_batch, max_size: int, max_wait: float):
        self.run_batch = run_batch
        self.max_size = max(1, max_size)
        self.max_wait = max(0.0, max_wait)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.batches_run = 0
        self.largest_batch = 0
        self.incoming = 0  # requests being decoded that will be submitted in a moment

    @contextlib.contextmanager
    def expecting(self):
        """Around a request's audio decoding: while any is in progress, a batch about to close
        waits for it (up to INCOMING_WAIT_S more), so jobs that arrived together, but finished
        decoding a few milliseconds apart, still share one forward pass."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work())
        fut = loop.create_future()
        self._queue.put_nowait((item, fut))
        return await fut

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            last_call = deadline + INCOMING_WAIT_S
            while len(batch) < self.max_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                now = loop.time()
                if now >= deadline and (not self.incoming or now >= last_call):
                    break
                wait = deadline - now if now < deadline else min(0.002, last_call - now)
                try:
                    batch.append(await asyncio.wait_for(queue.get(), wait))
                except asyncio.TimeoutError:
                    continue
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            futures = [fut for _, fut in batch]

            def settle(fut, res):
                if not fut.done():
                    fut.set_result(res)

            def deliver(k, res, futures=futures):  # called from the worker thread
                loop.call_soon_threadsafe(settle, futures[k], res)

            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch], deliver)
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiter, keep serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for fut, res in zip(futures, results):
                settle(fut, res)


# ---------------------------------------------------------------------------------------------
# segments and chunk merging
SEGMENT_GAP_S = 0.8
SEGMENT_MAX_S = 15.0


def make_segments(words: list[Word]) -> list[Segment]:
    """Group words into segments at sentence ends, pauses over 0.8 s, or every ~15 s."""
    segments: list[Segment] = []
    cur: list[Word] = []
    for w in words:
        if cur and (w.start - cur[-1].end > SEGMENT_GAP_S or w.end - cur[0].start > SEGMENT_MAX_S
                    or cur[-1].word[-1:] in ".?!"):
            segments.append(Segment(cur[0].start, cur[-1].end, " ".join(x.word for x in cur)))
            cur = []
        cur.append(w)
    if cur:
        segments.append(Segment(cur[0].start, cur[-1].end, " ".join(x.word for x in cur)))
    return segments


def chunk_spans(duration: float, chunk_s: float, overlap: float | None = None) -> list[tuple[float, float]]:
    """Chunks of ``chunk_s`` seconds that overlap by at least 2 s (wider than any word), so a
    word cut by one chunk's edge lies whole inside its neighbour."""
    if duration <= chunk_s:
        return [(0.0, duration)]
    overlap = min(max(2.0, 0.2 * chunk_s if overlap is None else overlap), chunk_s / 2)
    step = chunk_s - overlap
    n = max(1, math.ceil((duration - overlap) / step))
    return [(i * step, min(i * step + chunk_s, duration)) for i in range(n)]


SEAM_EDGE_S = 0.3  # words this close to a chunk's cut may be fragments: never put a seam there
SEAM_TRUST_S = 1.0  # a word heard by one chunk only counts if this far inside that chunk
SEAM_COVER_S = 0.08  # one encoder frame: timestamps of the same word in two chunks differ by about this


def seam_between(left: list[Word], right: list[Word], lo: float, hi: float) -> float:
    """Where to switch from the left chunk's words to the right one's, inside their overlap
    [lo, hi] (absolute seconds): the point farthest from every word centre that either chunk
    heard, i.e. a pause between words. Both chunks then agree on which side each word falls,
    so a word is neither lost nor doubled even when their timestamps differ slightly."""
    # Only the middle half of the overlap: there both chunks have context on both sides.
    edge = max(SEAM_EDGE_S, (hi - lo) / 4)
    a, b = lo + edge, hi - edge
    if b <= a:
        return (lo + hi) / 2
    mids = [(w.start + w.end) / 2 for w in left + right if w.end > lo and w.start < hi]
    grid = np.arange(a, b, 0.02)
    if not mids or grid.size == 0:
        return (lo + hi) / 2
    dist = np.min(np.abs(grid[:, None] - np.array(mids)[None, :]), axis=1)
    return float(grid[int(np.argmax(dist))])


def merge_chunks(spans: list[tuple[float, float]], results: list[Transcript]) -> Transcript:
    """Words of overlapping chunks on one time line, each word taken from exactly one chunk:
    the left one's before the seam, the right one's after it. Where the two chunks disagree
    near a seam (one heard a word the other did not), the word is kept if the chunk that heard
    it had it well inside its span and no chosen word covers that time."""
    shifted = [[Word(w.word, round(start + w.start, 3), round(start + w.end, 3), w.confidence) for w in r.words]
               for (start, _), r in zip(spans, results)]
    seams = [seam_between(shifted[i], shifted[i + 1], spans[i + 1][0], spans[i][1]) for i in range(len(spans) - 1)]
    bounds = [-math.inf] + seams + [math.inf]
    mid = lambda w: (w.start + w.end) / 2  # noqa: E731
    words = [w for i, ws in enumerate(shifted) for w in ws if bounds[i] <= mid(w) < bounds[i + 1]]
    extra = []
    for i, seam in enumerate(seams):
        lo, hi = spans[i + 1][0], spans[i][1]
        others = ([w for w in shifted[i] if seam <= mid(w) < hi - SEAM_TRUST_S]
                  + [w for w in shifted[i + 1] if lo + SEAM_TRUST_S <= mid(w) < seam])
        near = [c for c in words if c.end > lo - 1.0 and c.start < hi + 1.0]
        extra += [w for w in others
                  if not any(c.start - SEAM_COVER_S < w.end and w.start < c.end + SEAM_COVER_S for c in near)]
    if extra:
        words = sorted(words + extra, key=mid)
    for a, b in zip(words, words[1:]):  # keep starts monotone across seams
        if b.start < a.start:
            b.start = a.start
            b.end = max(b.end, b.start)
    return Transcript(" ".join(w.word for w in words), spans[-1][1], words, make_segments(words), chunks=len(spans))
