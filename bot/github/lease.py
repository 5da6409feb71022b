"""One writer at a time in GitHub mode: a lease kept on the repository itself, `refs/arbot/lease`.

`arbot serve`, `arbot decide`/`arbot propose` and the scheduled arbot-propose workflow all fill and decide. Two
of them at once could open more than `max_in_flight` experiments or decide one PR twice. So each takes the lease
before it fills or decides, and gives it back after.

The lease is a ref pointing at a commit (empty tree) whose message is JSON: `holder` (who: "arbot serve on HOST
pid N", "arbot-propose workflow run ID (URL)"), `acquired_at`, `expires_at` and a random `id` (so no two
leases are the same commit). Taking it is one compare-and-swap on the server:

    git push --force-with-lease=refs/arbot/lease:<the sha read, or empty when absent> REMOTE <new>:refs/arbot/lease

git checks the old value under the ref's lock, so of two writers that read the same value exactly one push
lands; the other reads again and finds the winner's lease. It may be taken when absent, expired, or held by
the same holder (a renewal). Releasing deletes it with the same swap, so a writer never deletes a lease that
is no longer its own. The time to live bounds a holder that crashed; clocks of the writers are assumed to agree
within a small fraction of it.

The lease commits are written in the bot's bare mirror (`local`). Every git command against the remote goes
through `run_git(*args)`, which replaces the literal "{remote}" by the (authenticated) URL, as
`Driver._git` does: no URL or token ever appears here or in an error from here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from io import BytesIO

import git
from gitdb import IStream

from bot.github.forge import GitHubForgeError

log = logging.getLogger("arbot.github")

LEASE_REF = "refs/arbot/lease"
DEFAULT_TTL = 600  # seconds: how long a crashed holder blocks the others
# how git says a compare-and-swap push lost (client side, then server side)
LOST_RACE = ("stale info", "cannot lock ref", "failed to update ref", "incorrect old value", "reference already exists")
IDENTITY = b"arbot <arbot@users.noreply.github.com>"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Holding:
    """What the lease commit says."""

    holder: str
    acquired_at: datetime
    expires_at: datetime
    id: str

    def to_json(self) -> str:
        return json.dumps({"holder": self.holder, "acquired_at": _iso(self.acquired_at),
                           "expires_at": _iso(self.expires_at), "id": self.id}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Holding:
        d = json.loads(text)

        def when(value: str) -> datetime:
            t = datetime.fromisoformat(value)
            return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)

        return cls(holder=str(d["holder"]), acquired_at=when(d["acquired_at"]), expires_at=when(d["expires_at"]),
                   id=str(d.get("id", "")))


@dataclass(frozen=True)
class Seen:
    """The lease ref as read on the remote: its sha (None: absent) and what it says (None: absent or not a lease)."""

    sha: str | None
    holding: Holding | None


class LeaseHeld(GitHubForgeError):
    """Another writer holds the lease. A GitHubForgeError, so the CLI prints it as one line with exit code 2."""

    def __init__(self, holder: str, expires_at: datetime | None):
        self.holder, self.expires_at = holder, expires_at
        until = f"until {_iso(expires_at)}" if expires_at is not None else "with no expiry"
        super().__init__(
            f"another arbot writer holds the lease {LEASE_REF}: {holder}, {until}. Only one writer may open or "
            f"decide experiments at a time. Run one of `arbot serve` and the arbot-propose workflow; or wait until "
            f"it releases the lease or the lease expires; or, if that holder is gone, delete the lease: "
            f"git push origin :{LEASE_REF}")


def holder_name(command: str, environ: Mapping[str, str] | None = None) -> str:
    """Who takes the lease. In GitHub Actions, the workflow run: every step of one run (`arbot decide` then
    `arbot propose`) is one holder, so the second renews the first's lease. Elsewhere, the command, host and pid."""
    env = os.environ if environ is None else environ
    run_id = env.get("GITHUB_RUN_ID")
    if env.get("GITHUB_ACTIONS") == "true" and run_id:
        name = f"{env.get('GITHUB_WORKFLOW') or 'workflow'} workflow run {run_id}"
        if env.get("GITHUB_REPOSITORY"):
            server = env.get("GITHUB_SERVER_URL") or "https://github.com"
            name += f" ({server}/{env['GITHUB_REPOSITORY']}/actions/runs/{run_id})"
        return name
    return f"arbot {command} on {socket.gethostname()} pid {os.getpid()}"


class Lease:
    """The lease on `refs/arbot/lease` for one holder. Not shared between threads: one per writer.

    `run_git(*args) -> str` runs git in `local` against the remote ("{remote}" stands for it) and raises on a
    non-zero exit; `local` is the bot's bare mirror, where the lease commits are written; `clock()` returns an
    aware datetime; `sleep(seconds)` is what `acquire(wait=...)` waits with."""

    def __init__(self, run_git: Callable[..., str], local: git.Repo, holder: str, ttl_seconds: float = DEFAULT_TTL,
                 clock: Callable[[], datetime] = utcnow, sleep: Callable[[float], None] = time.sleep,
                 poll_seconds: float = 5.0):
        if not holder.strip():
            raise ValueError("a lease needs a holder name")
        self.run_git, self.local, self.holder = run_git, local, holder
        self.ttl = timedelta(seconds=ttl_seconds)
        self.clock, self.sleep, self.poll_seconds = clock, sleep, poll_seconds
        self.sha: str | None = None  # the lease commit this object last put on the remote
        self.holding: Holding | None = None
        self._depth = 0  # held() entered and not yet left

    # --- reading ---------------------------------------------------------------------------------------
    def _remote_sha(self) -> str | None:
        out = self.run_git("ls-remote", "{remote}", LEASE_REF)
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref.strip() == LEASE_REF:
                return sha.strip()
        return None

    def _has(self, sha: str) -> bool:
        try:
            return self.local.odb.has_object(bytes.fromhex(sha))
        except ValueError:
            return False

    def read(self) -> Seen:
        """The lease on the remote now. Its commit is fetched into the mirror when not there already."""
        for attempt in range(1, 6):
            sha = self._remote_sha()
            if sha is None:
                return Seen(None, None)
            if self._has(sha):
                return Seen(sha, self._parse(sha))
            try:
                self.run_git("fetch", "--quiet", "--no-tags", "{remote}", f"+{LEASE_REF}:{LEASE_REF}")
            except Exception:
                if attempt == 5:
                    raise
                continue  # most likely released between ls-remote and fetch: read again
            fetched = self.local.git.rev_parse(LEASE_REF)
            return Seen(fetched, self._parse(fetched))
        raise AssertionError("unreachable")

    def _parse(self, sha: str) -> Holding | None:
        try:
            return Holding.from_json(self.local.commit(sha).message)
        except Exception:  # not a commit, not JSON, fields missing: not a lease arbot wrote
            return None

    def blocks(self, seen: Seen) -> bool:
        """Whether `seen` keeps this holder out: another holder's lease that has not expired, or something that
        is not a lease at all (a human has to look)."""
        if seen.sha is None:
            return False
        if seen.holding is None:
            return True
        return seen.holding.holder != self.holder and self.clock() < seen.holding.expires_at

    @staticmethod
    def held_error(seen: Seen) -> LeaseHeld:
        if seen.holding is None:
            return LeaseHeld(f"unknown ({LEASE_REF} points at {(seen.sha or '')[:12]}, which is not an arbot lease)",
                             None)
        return LeaseHeld(seen.holding.holder, seen.holding.expires_at)

    # --- writing: one compare-and-swap each ------------------------------------------------------------
    def _write(self, holding: Holding) -> str:
        """The lease commit in the mirror (no parent, empty tree, the JSON as its message)."""
        tree = self.local.odb.store(IStream("tree", 0, BytesIO(b""))).hexsha.decode()
        stamp = f"{int(holding.acquired_at.timestamp())} +0000".encode()
        body = (b"tree " + tree.encode() + b"\nauthor " + IDENTITY + b" " + stamp + b"\ncommitter " + IDENTITY
                + b" " + stamp + b"\n\n" + holding.to_json().encode() + b"\n")
        return self.local.odb.store(IStream("commit", len(body), BytesIO(body))).hexsha.decode()

    def _swap(self, expected: str | None, new: str | None) -> bool:
        """Set the remote ref from `expected` (None: absent) to `new` (None: delete), atomically. False when the
        ref held something else (another writer moved it): read again. Other errors are raised.

        A lost race shows as git's refusal ("stale info" when the client saw the change, "cannot lock ref" or
        "failed to update ref" when the server did), or as a ref that is no longer `expected`. The ref may be
        back at `expected` by then (the winner already released), hence the messages."""
        try:
            self.run_git("push", "--quiet", f"--force-with-lease={LEASE_REF}:{expected or ''}", "{remote}",
                         f"{new or ''}:{LEASE_REF}")
            return True
        except Exception as e:
            now = self._remote_sha()
            if now == new:  # it landed after all
                return True
            if now != expected or any(m in str(e) for m in LOST_RACE):
                return False
            raise

    def take(self, seen: Seen) -> bool:
        """Replace the lease `seen` by this holder's. LeaseHeld when `seen` blocks this holder; False when the ref
        is no longer what `seen` read (another writer swapped first): read again. A renewal keeps acquired_at."""
        if self.blocks(seen):
            raise self.held_error(seen)
        now = self.clock()
        mine = seen.holding is not None and seen.holding.holder == self.holder
        holding = Holding(self.holder, seen.holding.acquired_at if mine else now, now + self.ttl, uuid.uuid4().hex)
        sha = self._write(holding)
        if not self._swap(seen.sha, sha):
            return False
        if seen.holding is not None and not mine:
            log.warning("took over the expired lease of %s (expired %s)", seen.holding.holder,
                        _iso(seen.holding.expires_at))
        self.sha, self.holding = sha, holding
        return True

    # --- the API -----------------------------------------------------------------------------------------
    def acquire(self, wait: float = 0) -> Holding:
        """Take the lease (or renew it: same holder), waiting up to `wait` seconds for another holder to release
        it or for its lease to expire. LeaseHeld, naming the holder, when it cannot be had."""
        deadline = self.clock() + timedelta(seconds=wait)
        tries = 0
        while True:
            seen = self.read()
            tries += 1
            try:
                if self.take(seen):
                    return self.holding
            except LeaseHeld:
                left = (deadline - self.clock()).total_seconds()
                if left <= 0:
                    raise
                self.sleep(min(self.poll_seconds, left))
                continue
            # lost a race: the next read shows the winner (or that it is already gone)
            if tries >= 20 and self.clock() >= deadline:
                raise LeaseHeld("another writer (the lease kept changing)", None)

    def keep(self) -> None:
        """For long critical sections: renew when less than half the time to live is left (no git call before).
        Raises LeaseHeld when the lease is no longer the one this object took (it expired, and another writer
        took it, even if that one has released it since): what was read under it may be stale, stop writing."""
        if self.holding is None or self.sha is None:
            self.acquire()
            return
        if self.holding.expires_at - self.clock() >= self.ttl / 2:
            return
        seen = self.read()
        if seen.sha != self.sha:
            self.sha = self.holding = None
            if seen.holding is not None:
                raise LeaseHeld(seen.holding.holder, seen.holding.expires_at)
            raise LeaseHeld("another writer meanwhile (this lease expired and was taken since)", None)
        if not self.take(seen):
            self.sha = self.holding = None
            raise self.held_error(self.read())

    def release(self) -> bool:
        """Delete the lease if it is still this holder's. False (and nothing deleted) when it is not."""
        expected = self.sha
        if expected is None:
            seen = self.read()
            if seen.holding is None or seen.holding.holder != self.holder:
                return False
            expected = seen.sha
        self.sha = self.holding = None
        if self._swap(expected, None):
            return True
        log.warning("%s: the lease was no longer ours at release (it expired and another writer took it)",
                    self.holder)
        return False

    @contextmanager
    def held(self, wait: float = 0) -> Iterator[Lease]:
        """`with lease.held(): ...` runs the block under the lease. Re-entrant: an inner `held()` only renews
        when due (`keep`), and the outermost one releases. A failed release is logged (the lease then expires)."""
        if self._depth:
            self.keep()
        else:
            self.acquire(wait)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                expires = _iso(self.holding.expires_at) if self.holding is not None else "?"
                try:
                    self.release()
                except Exception as e:  # the lease expires by itself; never hide the block's own error
                    log.warning("%s: could not release %s (it expires at %s): %s", self.holder, LEASE_REF, expires, e)
