"""The handler `arbot serve` runs on each delivery: route it (pure), then act.

Here: ping, ignored events, `/arbot pause` and `/arbot resume` (a durable switch in the store). The rest goes
to the driver (bot.server.driver.Driver): a reported run, a merge, a push to champion, `/arbot rerun` and
`/arbot approve` each end in `advance_all`, which carries out the lifecycle for every active experiment and
proposes the next ones. Without a driver (no GitHub credentials configured) those
raise, so the delivery is recorded as failed with the reason and a manual redelivery runs it later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot.server.app import PAUSED_FLAG
from bot.server.events import (Adopt, ChampionMoved, Command, Evaluated, Ignored, Ping, PullRequestClosed, route)
from bot.server.store import Store
from bot.server.webhooks import Event

log = logging.getLogger("arbot.server")


class Dispatcher:
    def __init__(self, store: Store, repo: str | None = None, champion_branch: str = "champion",
                 bot_login: str | None = None, can_write: Callable[[str], bool] | None = None, driver=None,
                 branch_prefix: str = "arbot/exp-", authors: tuple[str, ...] = ()):
        """`can_write(user)` asks GitHub whether a user has write access (GitHubForge.has_write_access); without
        it, the comment's author_association (OWNER, MEMBER, COLLABORATOR) is all that is checked, and no label
        adopts a PR. `driver`: a bot.server.driver.Driver (or anything with its methods); `authors`:
        github.evaluate_authors."""
        self.store, self.repo, self.champion_branch, self.bot_login = store, repo, champion_branch, bot_login
        self.branch_prefix, self.authors = branch_prefix, tuple(authors)
        self.can_write = can_write
        self.driver = driver

    def __call__(self, event: Event) -> None:
        action = route(event, repo=self.repo, champion_branch=self.champion_branch, bot_login=self.bot_login,
                       branch_prefix=self.branch_prefix, authors=self.authors)
        log.info("delivery %s (%s): %s", event.delivery_id, event.kind, action)
        if isinstance(action, (Ping, Ignored)):
            return
        if isinstance(action, Command) and self.can_write is not None and not self.can_write(action.user):
            log.warning("delivery %s: /arbot %s from %s ignored: no write access", event.delivery_id, action.command,
                        action.user)
            return
        if isinstance(action, Command) and action.command in ("pause", "resume"):
            self.store.set_flag(PAUSED_FLAG, "1" if action.command == "pause" else None)
            log.warning("delivery %s: %s by %s", event.delivery_id, "paused" if action.command == "pause" else "resumed",
                        action.user)
            if action.command == "resume" and self.driver is not None:
                self.driver.fill()
            return
        if isinstance(action, Adopt) and action.by is not None and not (
                self.can_write is not None and self.can_write(action.by)):
            log.warning("delivery %s: the label on PR #%d by %s adopts nothing: %s", event.delivery_id, action.pr,
                        action.by, "no write access" if self.can_write else "no GitHub client to check access")
            return
        if isinstance(action, (Evaluated, PullRequestClosed, Adopt, ChampionMoved, Command)):
            self.act(event, action)

    def act(self, event: Event, action) -> None:
        d = self.driver
        if d is None:
            raise NotImplementedError(f"{type(action).__name__} needs the GitHub driver, and none is configured: set "
                                      f"the GitHub credentials (docs/github.md), restart and redeliver")
        if isinstance(action, PullRequestClosed) and action.merged:
            d.record_merged_pr(action.pr)
        elif isinstance(action, PullRequestClosed):
            d.pr_closed(action.pr)
        if isinstance(action, Adopt):
            d.adopt(action.pr, approved_by=action.by, approved_head=action.head_sha or None)
        if isinstance(action, Command) and action.command in ("rerun", "approve", "evaluate"):
            if not action.is_pr:
                log.warning("delivery %s: /arbot %s on issue #%d, which is not a PR", event.delivery_id,
                            action.command, action.issue)
            elif action.command == "rerun":
                d.rerun(action.issue)
            elif action.command == "evaluate":
                d.adopt(action.issue, approved_by=action.user)
            else:
                d.approve(action.issue)
        d.advance_all(polled(action))


def polled(action) -> tuple[int, ...]:
    """The workflow runs an event asks the driver to read: the one whose workflow_run.completed this is. A check run
    or status of arbot/evaluate is posted by the evaluate workflow's report job, before its workflow run completes,
    so it names no run that ended (the workflow_run event that follows does); the other events name none either.
    The catch-up timer reads every run in flight."""
    if isinstance(action, Evaluated) and action.source == "workflow_run" and action.run_id is not None:
        return (action.run_id,)
    return ()
