"""Run ASGI apps on real loopback ports for tests that are about HTTP.

The demo needs the same thing, so the tests use its server rather than a copy.
"""

from __future__ import annotations

from app.demo import LocalServer as ThreadedServer
from app.demo import free_port, serve

__all__ = ["ThreadedServer", "free_port", "serve"]
