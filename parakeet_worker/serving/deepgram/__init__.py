"""Deepgram's dialect: the live socket and the prerecorded route at /v1/listen."""
