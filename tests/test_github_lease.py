"""The writers' lease (bot.github.lease) against real git: a bare repository stands for GitHub, and each writer
has its own bare mirror and Lease, as `arbot serve` and the arbot-propose workflow would."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import git
import pytest
from gitdb import IStream

from bot.github.lease import LEASE_REF, Lease, LeaseHeld, Seen, holder_name

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
TTL = 600


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def remote(tmp_path) -> Path:
    path = tmp_path / "github.git"
    git.Repo.init(path, bare=True, mkdir=True)
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


def runner(mirror: git.Repo, remote: Path):
    """What Driver._git is to the driver: git in the mirror, "{remote}" replaced by the remote's location."""
    def run(*args: str) -> str:
        return mirror.git.execute(["git", *[str(remote) if a == "{remote}" else a for a in args]])
    return run


def writer(tmp_path: Path, remote: Path, name: str, clock=None, **kwargs) -> Lease:
    """A writer with its own mirror and its own Lease."""
    path = tmp_path / f"mirror-{name.replace(' ', '-')}-{len(list(tmp_path.iterdir()))}.git"
    mirror = git.Repo.init(path, bare=True, mkdir=True)
    if clock is not None:
        kwargs["clock"] = clock
    return Lease(runner(mirror, remote), mirror, holder=name, ttl_seconds=TTL, **kwargs)


def on_remote(remote: Path) -> dict | None:
    """The lease as GitHub has it: the JSON of refs/arbot/lease, None when absent."""
    repo = git.Repo(remote)
    try:
        return json.loads(repo.git.log("-1", "--format=%B", LEASE_REF))
    except git.GitCommandError:
        return None


def test_the_first_writer_takes_the_lease_and_the_second_is_told_who_holds_it(tmp_path, remote, clock):
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)

    holding = serve.acquire()
    assert holding.holder == "arbot serve on host-a pid 11"
    assert holding.expires_at == T0 + timedelta(seconds=TTL)
    assert on_remote(remote) == {"holder": "arbot serve on host-a pid 11", "acquired_at": "2030-01-01T12:00:00+00:00",
                                 "expires_at": "2030-01-01T12:10:00+00:00", "id": holding.id}

    with pytest.raises(LeaseHeld) as refused:
        workflow.acquire()
    assert refused.value.holder == "arbot serve on host-a pid 11"
    assert refused.value.expires_at == T0 + timedelta(seconds=TTL)
    message = str(refused.value)
    assert "arbot serve on host-a pid 11" in message and "until 2030-01-01T12:10:00+00:00" in message
    assert "Run one of `arbot serve` and the arbot-propose workflow" in message and "wait" in message
    assert f"git push origin :{LEASE_REF}" in message
    assert str(remote) not in message  # the remote (on GitHub: the URL with the token) is never named
    assert on_remote(remote)["holder"] == "arbot serve on host-a pid 11"  # the refusal changed nothing


def test_after_a_release_the_other_writer_takes_it(tmp_path, remote, clock):
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)
    serve.acquire()
    assert serve.release() is True
    assert on_remote(remote) is None
    assert workflow.acquire().holder == "arbot-propose workflow run 42"
    assert on_remote(remote)["holder"] == "arbot-propose workflow run 42"


def test_an_expired_lease_is_taken_over_and_its_old_holder_finds_out(tmp_path, remote, clock):
    crashed = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)
    crashed.acquire()
    clock.advance(TTL - 1)
    with pytest.raises(LeaseHeld):
        workflow.acquire()
    clock.advance(1)  # expires_at reached
    assert workflow.acquire().holder == "arbot-propose workflow run 42"

    # the old holder, back from the dead, neither keeps writing nor deletes the new lease
    with pytest.raises(LeaseHeld) as lost:
        crashed.keep()
    assert lost.value.holder == "arbot-propose workflow run 42"
    assert crashed.release() is False
    assert on_remote(remote)["holder"] == "arbot-propose workflow run 42"


def test_the_same_holder_renews(tmp_path, remote, clock):
    name = "arbot-propose workflow run 42"
    decide = writer(tmp_path, remote, name, clock)  # `arbot decide`, then `arbot propose`: one run, two processes
    propose = writer(tmp_path, remote, name, clock)
    other = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    first = decide.acquire()
    clock.advance(500)
    renewed = propose.acquire()
    assert renewed.acquired_at == first.acquired_at == T0  # held since
    assert renewed.expires_at == T0 + timedelta(seconds=500 + TTL)
    assert renewed.id != first.id
    clock.advance(200)  # past the first expiry, not the renewed one
    with pytest.raises(LeaseHeld) as refused:
        other.acquire()
    assert refused.value.expires_at == renewed.expires_at
    assert decide.acquire().expires_at == T0 + timedelta(seconds=700 + TTL)  # renewing again, same object


def test_keep_renews_only_when_half_the_time_is_gone(tmp_path, remote, clock):
    lease = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    first = lease.acquire()
    clock.advance(TTL / 2 - 1)
    lease.keep()
    assert on_remote(remote)["id"] == first.id
    clock.advance(2)
    lease.keep()
    assert on_remote(remote)["expires_at"] == (T0 + timedelta(seconds=TTL / 2 + 1 + TTL)).isoformat()


def test_keep_refuses_once_another_writer_had_the_lease_even_if_it_is_free_again(tmp_path, remote, clock):
    """What a writer read under its lease may be stale once another writer held it in between."""
    slow = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    other = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)
    slow.acquire()
    clock.advance(TTL)
    with other.held():
        pass
    assert on_remote(remote) is None
    with pytest.raises(LeaseHeld, match="taken since"):
        slow.keep()
    assert on_remote(remote) is None and slow.holding is None


@pytest.mark.parametrize("before", ["absent", "expired"])
def test_a_race_lets_exactly_one_writer_win(tmp_path, remote, clock, before):
    """Both read the same value, then both push: git's compare-and-swap lets the first push land and refuses the
    second, whose writer then reads the winner's lease and is refused with its name."""
    if before == "expired":
        writer(tmp_path, remote, "arbot serve on host-z pid 99", clock).acquire()
        clock.advance(TTL + 1)
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)

    seen_by_serve, seen_by_workflow = serve.read(), workflow.read()
    assert seen_by_serve == seen_by_workflow  # the same old value
    assert (seen_by_serve.sha is None) == (before == "absent")

    assert serve.take(seen_by_serve) is True
    assert workflow.take(seen_by_workflow) is False  # stale expected value: the push is refused
    assert on_remote(remote)["holder"] == "arbot serve on host-a pid 11"
    assert workflow.holding is None and workflow.sha is None
    with pytest.raises(LeaseHeld) as refused:
        workflow.acquire()
    assert refused.value.holder == "arbot serve on host-a pid 11"


def test_a_release_with_a_stale_expected_value_deletes_nothing(tmp_path, remote, clock):
    """Releasing is the same swap: a writer whose lease was taken over cannot delete the new one."""
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)
    serve.acquire()
    stale = serve.read()
    clock.advance(TTL)
    workflow.acquire()
    assert serve._swap(stale.sha, None) is False
    assert on_remote(remote)["holder"] == "arbot-propose workflow run 42"


def test_a_release_by_a_non_holder_does_not_delete_the_lease(tmp_path, remote, clock):
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)
    serve.acquire()
    assert workflow.release() is False
    assert on_remote(remote)["holder"] == "arbot serve on host-a pid 11"
    assert workflow.release() is False  # and releasing when nothing is held is harmless
    serve.release()
    assert workflow.release() is False and on_remote(remote) is None


def test_held_releases_on_exit_and_on_error_and_nests(tmp_path, remote, clock):
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock)
    with serve.held() as lease:
        assert lease is serve
        with serve.held():  # advance_all -> fill: the inner block neither takes it twice nor releases it
            pass
        assert on_remote(remote)["holder"] == "arbot serve on host-a pid 11"
        with pytest.raises(LeaseHeld):
            with workflow.held():
                raise AssertionError("never runs")
    assert on_remote(remote) is None

    with pytest.raises(RuntimeError, match="boom"):
        with serve.held():
            raise RuntimeError("boom")
    assert on_remote(remote) is None


def test_acquire_waits_for_the_holder_to_release_or_expire(tmp_path, remote, clock):
    serve = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    slept: list[float] = []

    def sleep_and_release(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        if len(slept) == 3:
            serve.release()

    workflow = writer(tmp_path, remote, "arbot-propose workflow run 42", clock, sleep=sleep_and_release, poll_seconds=5)
    serve.acquire()
    assert workflow.acquire(wait=60).holder == "arbot-propose workflow run 42"
    assert slept == [5, 5, 5]

    def sleep(seconds: float) -> None:  # nobody releases: the lease expires
        slept.append(seconds)
        clock.advance(seconds)

    late = writer(tmp_path, remote, "arbot decide on host-b pid 7", clock, sleep=sleep, poll_seconds=60)
    slept.clear()
    assert late.acquire(wait=TTL + 60).holder == "arbot decide on host-b pid 7"
    assert sum(slept) == TTL
    slept.clear()
    with pytest.raises(LeaseHeld):  # a wait shorter than the lease: refused once it is over
        writer(tmp_path, remote, "arbot serve on host-a pid 11", clock, sleep=sleep, poll_seconds=60).acquire(wait=90)
    assert slept == [60, 30]


def test_something_that_is_not_a_lease_blocks_everyone_and_says_so(tmp_path, remote, clock):
    repo = git.Repo(remote)
    blob = repo.odb.store(IStream("blob", 5, BytesIO(b"hello"))).hexsha.decode()
    repo.git.update_ref(LEASE_REF, blob)
    lease = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    with pytest.raises(LeaseHeld) as refused:
        lease.acquire()
    assert refused.value.expires_at is None
    assert "not an arbot lease" in str(refused.value) and "with no expiry" in str(refused.value)
    assert lease.release() is False and repo.git.rev_parse(LEASE_REF) == blob


def test_a_git_failure_that_is_not_a_lost_race_is_raised(tmp_path, remote, clock):
    """A push refused for another reason (permissions, network) with the lease unchanged is raised as it is,
    never mistaken for a lost race or for another holder."""
    pushes: list[tuple] = []
    lease = writer(tmp_path, remote, "arbot serve on host-a pid 11", clock)
    real = lease.run_git

    def no_push(*args: str) -> str:
        if args[0] == "push":
            pushes.append(args)
            raise RuntimeError("git push failed: remote: Permission to octo-org/research.git denied")
        return real(*args)

    lease.run_git = no_push
    with pytest.raises(RuntimeError, match="Permission"):
        lease.acquire()
    assert len(pushes) == 1 and on_remote(remote) is None and lease.holding is None
    with pytest.raises(git.GitCommandError):  # no remote at all: the read fails
        writer(tmp_path, tmp_path / "no-such-remote.git", "arbot serve on host-a pid 11", clock).acquire()


def test_a_race_lost_on_the_server_counts_as_lost_even_when_the_winner_already_released(tmp_path, clock):
    """Through Driver._git, errors are GitHubForgeError with git's stderr. A push refused by the server ("cannot
    lock ref": another push landed first) may find the ref back at the expected value (the winner released
    meanwhile): still a lost race, read again, not an error."""
    from bot.github.forge import GitHubForgeError

    mirror = git.Repo.init(tmp_path / "mirror.git", bare=True, mkdir=True)

    def run(*args: str) -> str:
        if args[0] == "push":
            raise GitHubForgeError("git push failed: remote: error: cannot lock ref 'refs/arbot/lease': reference "
                                   "already exists\n ! [remote rejected] abc -> refs/arbot/lease (failed to update ref)")
        return ""  # ls-remote: absent, as expected

    lease = Lease(run, mirror, holder="arbot serve on host-a pid 11", clock=clock)
    assert lease.take(Seen(None, None)) is False
    assert lease.holding is None


def test_holder_names():
    env = {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "42", "GITHUB_WORKFLOW": "arbot-propose",
           "GITHUB_REPOSITORY": "octo-org/research", "GITHUB_SERVER_URL": "https://github.com"}
    workflow = "arbot-propose workflow run 42 (https://github.com/octo-org/research/actions/runs/42)"
    assert holder_name("decide", env) == holder_name("propose", env) == workflow  # one run: one holder
    name = holder_name("serve", {})
    assert name.startswith("arbot serve on ") and name.endswith(f" pid {__import__('os').getpid()}")
    with pytest.raises(ValueError):
        Lease(lambda *a: "", None, holder=" ")


def test_two_writers_in_threads_never_overlap(tmp_path, remote):
    """2 writers x 20 acquire/release cycles with the real clock: the critical sections never overlap."""
    inside, most, entered = [0], [0], []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        lease = writer(tmp_path, remote, name, poll_seconds=0.01)
        try:
            for _ in range(20):
                with lease.held(wait=60):
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                        entered.append(name)
                    time.sleep(0.005)
                    with guard:
                        inside[0] -= 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"writer {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert most[0] == 1
    assert sorted(entered) == ["writer 0"] * 20 + ["writer 1"] * 20
    assert on_remote(remote) is None


def test_two_fillers_never_exceed_max_in_flight(tmp_path, remote):
    """The bug this fixes: two writers that each count the open experiments and open one when fewer than
    max_in_flight (1) are open. Under the lease, exactly one experiment branch is opened."""
    max_in_flight = 1

    def fill(name: str) -> None:
        lease = writer(tmp_path, remote, name, poll_seconds=0.01)
        run = lease.run_git
        for attempt in range(5):
            with lease.held(wait=60):
                open_branches = run("ls-remote", "{remote}", "refs/heads/arbot/*").splitlines()
                if len(open_branches) < max_in_flight:
                    time.sleep(0.05)  # widen the window between counting and opening
                    body = f"tree {lease.local.odb.store(IStream('tree', 0, BytesIO(b''))).hexsha.decode()}\n" \
                           f"author a <a@b> 0 +0000\ncommitter a <a@b> 0 +0000\n\n{name} {attempt}\n".encode()
                    sha = lease.local.odb.store(IStream("commit", len(body), BytesIO(body))).hexsha.decode()
                    run("push", "--quiet", "{remote}", f"{sha}:refs/heads/arbot/{name.replace(' ', '-')}-{attempt}")

    threads = [threading.Thread(target=fill, args=(f"writer {i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert len(git.Repo(remote).git.for_each_ref("refs/heads/arbot/").splitlines()) == max_in_flight
