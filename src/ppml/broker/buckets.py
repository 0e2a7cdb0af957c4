"""Token buckets per client, for the request rate limit and the budget of refusal entries."""

from __future__ import annotations

import time

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """A bucket of ``burst`` tokens per client, refilled at ``rate`` per second; idle (full) buckets are dropped,
    so memory follows the clients active within the last ``burst / rate`` seconds."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._next_prune = 1024

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0 when there was one, else the seconds until there is."""
        now = time.monotonic()
        if len(self._buckets) >= self._next_prune:
            refill = self.burst / self.rate
            self._buckets = {c: (t, s) for c, (t, s) in self._buckets.items() if now - s < refill}
            self._next_prune = max(1024, 2 * len(self._buckets))
        tokens, stamp = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate
