"""One breaker per upstream, its state shared by every process through one atomic Redis Lua step.

See `shared.platform.resilience` for how calls use it. `Breaker` is this process's copy of the shared
state (`SharedRecord`); the Lua script is the only writer of the Redis side.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import shared.platform.metrics as metrics
from shared.platform.logging import get_logger
from shared.platform.upstreams import Upstream

log = get_logger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
#: How long a half-open trial call holds its lease before another caller may try.
TRIAL_LEASE_S = 5.0
#: A shared failure count with no new failure for this long starts again from zero.
FAILURE_WINDOW_S = 60.0
#: The shared state outlives the last process that read or wrote it by this long (heartbeats re-read it
#: every second), so a stack started again later starts closed, as one whose processes kept it in memory.
SHARED_STATE_TTL_S = 5.0
#: After a Redis error, breakers use this process's copy for this long before trying Redis again.
REDIS_RETRY_S = 1.0


@dataclass
class BreakerSnapshot:
    """A breaker's state as reported by /health/circuits."""

    state: str
    failure_count: int
    failure_threshold: int
    recovery_timeout_s: float
    opened_at: str | None
    last_error: str | None
    updated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return dict(self.__dict__)


def _from_ms(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


# One step of one breaker, atomically. KEYS: the state hash, the trial lock. ARGV: op (read | acquire |
# failure | success | release | reset), threshold, recovery_ms, lease_ms, window_ms, token, error,
# channel, upstream name, ttl_ms (each step, a re-read included, keeps the state alive that long).
# Returns (and PUBLISHes on a transition) the state after the step, with the Redis clock, the trial lock's PTTL, the verdict (acquire: ok | trial | refused) and the state before.
BREAKER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, threshold, recovery = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at', 'failed_at',
                     'last_error', 'last_error_at', 'version', 'epoch')
local state, failures, opened_at = f[1] or 'closed', tonumber(f[2]) or 0, tonumber(f[3]) or 0
local failed_at, last_error, last_error_at = tonumber(f[4]) or 0, f[5] or '', tonumber(f[6]) or 0
local version, epoch = tonumber(f[7]) or 0, tonumber(f[8]) or 0
local function effective()
  if state == 'open' and now >= opened_at + recovery then return 'half_open' end
  return state
end
local before, verdict, write = effective(), 'ok', false
if op == 'acquire' then
  if before == 'open' then
    verdict = 'refused'
  elseif before == 'half_open' then
    verdict = redis.call('SET', KEYS[2], ARGV[6], 'NX', 'PX', ARGV[4]) and 'trial' or 'refused'
  end
elseif op == 'failure' then
  if state == 'closed' and now - failed_at > tonumber(ARGV[5]) then failures = 0 end
  failures, failed_at, last_error, last_error_at, write = failures + 1, now, ARGV[7], now, true
  if before == 'half_open' or (state == 'closed' and failures >= threshold) then
    state, opened_at = 'open', now
    redis.call('DEL', KEYS[2])
  end
elseif op == 'success' then
  if state ~= 'closed' or failures > 0 then
    state, failures, opened_at, write = 'closed', 0, 0, true
    redis.call('DEL', KEYS[2])
  end
elseif op == 'release' then
  if redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
elseif op == 'reset' then
  redis.call('DEL', KEYS[2])
  state, failures, opened_at, failed_at, last_error, last_error_at, write = 'closed', 0, 0, 0, '', 0, true
end
if write then
  if epoch == 0 then epoch = now end
  version = version + 1
  redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'opened_at', opened_at, 'failed_at', failed_at,
             'last_error', last_error, 'last_error_at', last_error_at, 'version', version, 'epoch', epoch)
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[10]) end
local out = {state, failures, opened_at, last_error, last_error_at, version, now, redis.call('PTTL', KEYS[2]),
             verdict, before, epoch}
if write and (effective() ~= before or op == 'reset') then
  redis.call('PUBLISH', ARGV[8], cjson.encode({ARGV[9], unpack(out)}))
end
return out
"""


@dataclass(frozen=True)
class SharedRecord:
    """A breaker's shared state as the script returned (or published) it; times in Redis-clock ms."""

    state: str
    failures: int
    opened_at_ms: int
    last_error: str
    last_error_at_ms: int
    version: int
    now_ms: int
    trial_pttl_ms: int
    verdict: str
    before: str
    epoch: int  # when the hash was created (a flushed or lost hash starts a new epoch)

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> SharedRecord:
        """From the script's reply (bytes or str items)."""
        v = [item.decode() if isinstance(item, bytes) else item for item in raw]
        numbers = [int(v[i]) for i in (1, 2, 4, 5, 6, 7, 10)]
        failures, opened_at, last_error_at, version, now, pttl, epoch = numbers
        return cls(
            str(v[0]), failures, opened_at, str(v[3]), last_error_at, version, now, pttl, str(v[8]), str(v[9]), epoch
        )

    def as_view(self, recovery_s: float) -> dict[str, Any]:
        """Top-level fields of /health/circuits for this breaker."""
        state = self.state
        if state == OPEN and self.now_ms >= self.opened_at_ms + recovery_s * 1000:
            state = HALF_OPEN
        opened = _from_ms(self.opened_at_ms) if self.state == OPEN else None
        return {
            "state": state,
            "failure_count": self.failures,
            "opened_at": opened.isoformat() if opened else None,
            "last_error": self.last_error or None,
        }


class Breaker:
    """One upstream's breaker as this process sees it: its copy of the shared state (or, while Redis is
    out of reach, the state itself, kept by the same rules). Transitions are logged, counted in /metrics
    and sent to listeners."""

    def __init__(self, upstream: Upstream, *, failure_threshold: int, recovery_timeout: float) -> None:
        self.upstream = upstream
        self.failure_threshold = failure_threshold
        self.recovery_timeout_s = float(recovery_timeout)
        self.lease_s = max(0.001, min(TRIAL_LEASE_S, self.recovery_timeout_s))
        self.stored_state = CLOSED  # closed | open; half_open is open once the recovery time has passed
        self.failure_count = 0
        self.opened_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.version = (0, 0)  # (epoch, version) of the shared state last adopted
        self._reopen_at = 0.0  # monotonic: when open turns half_open
        self._failed_at = 0.0  # monotonic: the last counted failure
        self._trial_busy_until = 0.0  # monotonic: some caller (any process) holds the trial lease
        self._trial_owner: asyncio.Task[Any] | None = None  # this process's trial: its task, token, end
        self._trial_token = ""
        self._trial_until = 0.0
        self._owns_trial = False
        self._listeners: list[Callable[[Upstream, str, str], None]] = []
        self._reported = CLOSED

    # -- reading -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """closed, open, or half_open (open and the recovery time has passed)."""
        if self.stored_state == OPEN and time.monotonic() >= self._reopen_at:
            return HALF_OPEN
        return self.stored_state

    @property
    def open_remaining(self) -> int:
        """Whole seconds until the trial call may go (0 or less once half-open)."""
        remaining = self._reopen_at - time.monotonic()
        return math.ceil(remaining) if remaining > 0 else math.floor(remaining)

    def refresh(self) -> str:
        """Current state, reporting an open -> half_open transition that happened by time passing."""
        self._notify()
        return self.state

    def is_clean(self) -> bool:
        """Closed with no failure counted (a success has nothing to write)."""
        return self.stored_state == CLOSED and self.failure_count == 0

    def holds_trial(self) -> bool:
        """True in the task running this process's half-open trial (re-entrant: call -> engine connect)."""
        return self._owns_trial and self._trial_owner is asyncio.current_task() and time.monotonic() < self._trial_until

    def trial_busy(self) -> bool:
        """True while a trial call is in flight elsewhere (another task here, or another process)."""
        return not self.holds_trial() and time.monotonic() < self._trial_busy_until

    def snapshot(self) -> BreakerSnapshot:
        """State for /health/circuits."""
        state = self.refresh()
        return BreakerSnapshot(
            state=state,
            failure_count=self.failure_count,
            failure_threshold=self.failure_threshold,
            recovery_timeout_s=self.recovery_timeout_s,
            opened_at=self.opened_at.isoformat() if self.opened_at and state != CLOSED else None,
            last_error=self.last_error,
        )

    # -- the trial -----------------------------------------------------------------------------
    def take_trial(self, token: str) -> None:
        """The current task now runs the trial (`token` is its lock in Redis, "" for a local trial)."""
        self._owns_trial, self._trial_owner, self._trial_token = True, asyncio.current_task(), token
        self._trial_until = time.monotonic() + self.lease_s
        self._trial_busy_until = max(self._trial_busy_until, self._trial_until)

    def end_trial(self) -> str:
        """End this process's trial if the current task runs it; returns its Redis token ("" if none)."""
        if not self._owns_trial or self._trial_owner is not asyncio.current_task():
            return ""
        token = self._trial_token
        self._drop_trial()
        return token

    def _drop_trial(self) -> None:
        self._owns_trial, self._trial_owner, self._trial_token, self._trial_until = False, None, "", 0.0
        self._trial_busy_until = 0.0

    # -- the rules, on this process's copy (while Redis is out of reach) ----------------------------
    def local_acquire(self) -> str:
        """ok (closed), trial (the half-open lease was free) or refused."""
        state = self.state
        if state == CLOSED:
            return "ok"
        if state == OPEN or time.monotonic() < self._trial_busy_until:
            return "refused"
        self._trial_busy_until = time.monotonic() + self.lease_s
        return "trial"

    def local_failure(self, error: str) -> None:
        """Count a failure; open at the threshold, re-open from half-open."""
        now, half_open = time.monotonic(), self.state == HALF_OPEN
        if self.stored_state == CLOSED and now - self._failed_at > FAILURE_WINDOW_S:
            self.failure_count = 0
        self.failure_count += 1
        self._failed_at = now
        self.last_error, self.last_error_at = error, datetime.now(UTC)
        if half_open or (self.stored_state == CLOSED and self.failure_count >= self.failure_threshold):
            self.stored_state, self.opened_at = OPEN, datetime.now(UTC)
            self._reopen_at, self._trial_busy_until = now + self.recovery_timeout_s, 0.0
        self._notify()

    def local_success(self) -> None:
        """Close (a success anywhere is proof the upstream answers)."""
        if not self.is_clean():
            self.stored_state, self.failure_count, self.opened_at = CLOSED, 0, None
            self._trial_busy_until = 0.0
        self._notify()

    def local_reset(self) -> None:
        """Closed, nothing counted, no error remembered, no trial."""
        self._drop_trial()
        self.stored_state, self.failure_count, self.opened_at = CLOSED, 0, None
        self.last_error = self.last_error_at = None
        self._reopen_at = 0.0
        self._notify()

    def adopt(self, record: SharedRecord) -> None:
        """Take the shared state (unless it is older than the copy already held)."""
        if record.epoch == self.version[0] and record.version < self.version[1]:
            return
        now = time.monotonic()
        self.version = (record.epoch, record.version)
        self.stored_state, self.failure_count = record.state, record.failures
        self.opened_at = _from_ms(record.opened_at_ms) if record.state == OPEN else None
        self._reopen_at = now + (record.opened_at_ms + self.recovery_timeout_s * 1000 - record.now_ms) / 1000
        self._trial_busy_until = now + record.trial_pttl_ms / 1000 if record.trial_pttl_ms > 0 else 0.0
        if record.failures:
            self._failed_at = now
        self.last_error = record.last_error or None
        self.last_error_at = _from_ms(record.last_error_at_ms)
        self._notify()

    # -- transitions ---------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[Upstream, str, str], None]) -> None:
        """Call `listener(upstream, old_state, new_state)` on every transition."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        state = self.state
        if state == self._reported:
            return
        previous, self._reported = self._reported, state
        metrics.record_breaker_transition(self.upstream.value, previous, state)
        log.warning(
            "circuit.transition",
            upstream=self.upstream.value,
            previous=previous,
            state=state,
            failure_count=self.failure_count,
            last_error=self.last_error,
        )
        for listener in list(self._listeners):
            try:
                listener(self.upstream, previous, state)
            except Exception as exc:  # pragma: no cover - observers must never break a call
                log.warning("circuit.listener_failed", error=type(exc).__name__)
