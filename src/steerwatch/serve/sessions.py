"""Sessions of the watch page: a browser signs in once with an admin API key (a form POST) and
gets a random session token in an HttpOnly, SameSite=Strict cookie. The server keeps only the
token's SHA-256 with the key's name and an expiry, in memory: a restart signs everyone out, and
the key itself never reaches the browser's storage."""
from __future__ import annotations

import hashlib
import secrets
import threading
import time

SESSION_TTL_S = 8 * 3600  # a session lasts 8 hours from sign-in
MAX_SESSIONS = 256  # beyond this, the oldest session is dropped


class Sessions:
    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._by_digest: dict[str, tuple[str, float]] = {}  # sha256(token) -> (key name, expiry)
        self._lock = threading.Lock()

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def create(self, key_name: str) -> str:
        """A new session for ``key_name``; returns its token (for the cookie)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            for d in [d for d, (_, exp) in self._by_digest.items() if exp <= now]:
                del self._by_digest[d]
            while len(self._by_digest) >= self.max_sessions:
                del self._by_digest[min(self._by_digest, key=lambda d: self._by_digest[d][1])]
            self._by_digest[self._digest(token)] = (key_name, now + self.ttl_s)
        return token

    def lookup(self, token: str | None) -> str | None:
        """The key name of a live session, else None (an expired one is forgotten)."""
        if not token:
            return None
        d = self._digest(token)
        with self._lock:
            entry = self._by_digest.get(d)
            if entry is None:
                return None
            if entry[1] <= time.time():
                del self._by_digest[d]
                return None
            return entry[0]

    def drop(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._by_digest.pop(self._digest(token), None)
