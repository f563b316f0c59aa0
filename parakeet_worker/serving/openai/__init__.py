"""OpenAI's dialect: the transcription routes, the model list, and their request and response forms."""
