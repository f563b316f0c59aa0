"""Fault injection for tests that start a real worker process: Python imports this file at
start-up when its folder is on PYTHONPATH. ``INJECT_DEVICE_ERROR`` chooses the fault:

- ``stream``: the first streaming step (NeMo's pipeline ``transcribe_step``) raises;
- ``offline``: the first batch forward pass after the engine is warm raises;
- ``slow_stream``: not an error but overload: every streaming step sleeps ``SLOW_STEP_S`` seconds
  while the file ``SLOW_STEP_FLAG`` exists (a server far behind real time).

The error is torch's own ``AcceleratorError`` with the message a real H200 gave for an illegal
memory access, so the worker meets exactly what a poisoned CUDA context raises. Nothing happens
without the variable; the product never imports this file.
"""

import importlib.abc
import importlib.util
import os
import sys

MODE = os.environ.get("INJECT_DEVICE_ERROR", "")
MESSAGE = "CUDA error: an illegal memory access was encountered"
PIPELINE = "nemo.collections.asr.inference.pipelines.buffered_rnnt_pipeline"
TARGETS = {"stream": PIPELINE, "slow_stream": PIPELINE, "offline": "parakeet_worker.engine.engine"}


def _raise():
    import torch

    raise torch.AcceleratorError(MESSAGE)


def _patch(module) -> None:
    if MODE == "slow_stream":
        import time

        real_step = module.BufferedRNNTPipeline.transcribe_step
        flag, delay = os.environ["SLOW_STEP_FLAG"], float(os.environ["SLOW_STEP_S"])

        def slow_step(self, frames):
            if os.path.exists(flag):
                time.sleep(delay)
            return real_step(self, frames)

        module.BufferedRNNTPipeline.transcribe_step = slow_step
    elif MODE == "stream":

        def transcribe_step(self, frames):
            _raise()

        module.BufferedRNNTPipeline.transcribe_step = transcribe_step
    else:
        real = module.Engine._model_pass

        def _model_pass(self, *args, **kwargs):
            if self.ready:  # after start-up (warm-up passes run before ready)
                _raise()
            return real(self, *args, **kwargs)

        module.Engine._model_pass = _model_pass


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGETS[MODE]:
            return None
        sys.meta_path.remove(self)  # the real spec, found without us
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


if MODE in TARGETS:
    sys.meta_path.insert(0, _PatchOnImport())
