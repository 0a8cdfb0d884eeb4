"""The HTTP API (``outlast serve``): REST endpoints, WebSocket progress and Prometheus metrics.

This package's ``__init__`` imports nothing heavy: FastAPI, uvicorn and prometheus-client (the
``api`` extra) are imported only by ``engine.api.app`` and ``engine.api.server`` when serving.
"""
