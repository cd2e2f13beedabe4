"""The HTTP API (FastAPI). Never imports torch, the worker or the trainer."""
