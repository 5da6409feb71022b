"""`arbot serve`: build the settings from the config and the environment, then run uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bot.config import Config, ConfigError


def settings_from_config(config: Config, root: Path, environ: dict | None = None):
    from bot.server.app import ServerSettings

    env = os.environ if environ is None else environ
    gh = config.github
    secret = env.get(gh.webhook_secret_env, "")
    if not secret:
        raise ConfigError(
            f"no webhook secret: set the environment variable {gh.webhook_secret_env} to the secret configured on "
            f"the GitHub webhook (or name another variable in github.webhook_secret_env)"
        )
    state = Path(gh.state_path)
    return ServerSettings(
        secret=secret, state_path=state if state.is_absolute() else root / state, repo=gh.repo, paused=gh.paused,
        experiments_per_day=gh.experiments_per_day, runner_minutes_per_day=gh.runner_minutes_per_day,
        catch_up_seconds=gh.catch_up_minutes * 60,
    )


def build_app(config: Config, root: Path, environ: dict | None = None):
    """The app `arbot serve` runs; contacts nothing but its SQLite state file."""
    from bot.server.app import create_app
    from bot.server.dispatch import Dispatcher
    from bot.server.store import Store

    settings = settings_from_config(config, root, environ)
    store = Store(settings.state_path)
    can_write = driver = None
    try:  # builds the client only: PyGithub contacts GitHub on the first call, not here
        from bot.github.forge import GitHubForgeError, connect

        forge = connect(config.github, environ, champion_branch=config.run.champion_branch,
                        branch_prefix=config.run.branch_prefix)
        can_write = forge.has_write_access
        driver = build_driver(config, root, forge, store, settings)
    except (GitHubForgeError, OSError) as e:
        logging.getLogger("arbot.server").warning(
            "no GitHub client (%s): /arbot commands are checked by author_association only, and evaluations are "
            "not decided", e)
    dispatcher = Dispatcher(store, repo=settings.repo, champion_branch=config.run.champion_branch, can_write=can_write,
                            driver=driver, branch_prefix=config.run.branch_prefix,
                            authors=tuple(config.github.evaluate_authors))
    return create_app(settings, dispatcher, store, on_start=driver.advance_all if driver is not None else None,
                      progress=driver.progress if driver is not None else None)


def build_driver(config: Config, root: Path, forge, store, settings, mirror_path: Path | None = None,
                 command: str = "serve", lease_wait: float | None = None):
    """The GitHub mode driver: the bot's bare mirror (.arbot/github.git), the configured proposer and policy,
    the daily budget and the pause switch (config or `/arbot pause`). The LLM proposer's smoke runs use the
    runner's training sandbox, as in `arbot run`. `command` names this writer on the lease; by default it waits
    out another holder's lease (a server restarted before its old lease expired). Runs and decisions are also
    logged to the configured tracker (tracking:), by the bot: the runner logs nothing. Contacts nothing."""
    from bot.server.driver import Driver
    from bot.surfaces.github import MIRROR, mirror
    from bot.github.lease import DEFAULT_TTL, holder_name
    from bot.core.policy import make_policy
    from bot.proposers.factory import make_proposer
    from bot.server.app import PAUSED_FLAG
    from bot.server.store import Budget
    from bot.tracking import make_tracker
    from runner.job import Runner

    local = mirror(mirror_path or root / MIRROR)
    budget = Budget(store, settings.experiments_per_day, settings.runner_minutes_per_day)
    sandbox = Runner(local, config.target, config.evaluator).sandbox
    return Driver(forge, local, config, make_proposer(config, local, sandbox=sandbox), make_policy(config.policy),
                  budget=budget, paused=lambda: settings.paused or store.flag(PAUSED_FLAG) == "1",
                  holder=holder_name(command), lease_wait=DEFAULT_TTL + 60 if lease_wait is None else lease_wait,
                  tracker=make_tracker(config.tracking, local))


def serve(config: Config, root: Path, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(config, root)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
