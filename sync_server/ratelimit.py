"""A per-client token bucket for the costly routes (photo search decodes and runs two networks per request).

In-process: each gunicorn worker keeps its own buckets, so the effective limit is ``workers x rate``; put a
global limit in the reverse proxy too (docs/DEPLOYMENT.md). Clients are told when to retry (``Retry-After``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from coinvision.sync_server.api_errors import ApiError

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``burst`` requests at once per client, refilled at ``per_minute``; at most ``max_clients`` remembered."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate_s = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str, what: str, now: float | None = None) -> None:
        """Spend one token of ``client``'s bucket, or raise 429 with the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.pop(client, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_s)
            bucket.updated = now
            self._buckets[client] = bucket  # most recently used last
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = math.ceil((1.0 - bucket.tokens) / self.rate_s)
        raise ApiError(
            429, "rate_limited",
            f"too many {what} requests from {client}: at most {self.burst:.0f} at once and "
            f"{self.rate_s * 60:g} per minute; retry in {wait} s",
            {"retry_after_s": wait}, headers={"Retry-After": str(wait)},
        )
