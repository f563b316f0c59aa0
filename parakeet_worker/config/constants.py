"""Facts every module shares (the client included, so this file imports nothing)."""

SAMPLE_RATE = 16000  # Hz: the model's input rate; every audio source is resampled to it
