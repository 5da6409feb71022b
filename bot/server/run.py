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
    )


def build_app(config: Config, root: Path, environ: dict | None = None):
    """The app `arbot serve` runs; contacts nothing but its SQLite state file."""
    from bot.server.app import create_app
    from bot.server.dispatch import Dispatcher
    from bot.server.store import Store

    settings = settings_from_config(config, root, environ)
    store = Store(settings.state_path)
    can_write = None
    try:  # builds the client only: PyGithub contacts GitHub on the first call, not here
        from bot.github.forge import GitHubForgeError, connect

        can_write = connect(config.github, environ, champion_branch=config.run.champion_branch).has_write_access
    except (GitHubForgeError, OSError) as e:
        logging.getLogger("arbot.server").warning(
            "no GitHub client (%s): /arbot commands are checked by author_association only", e)
    dispatcher = Dispatcher(store, repo=settings.repo, champion_branch=config.run.champion_branch, can_write=can_write)
    return create_app(settings, dispatcher, store)


def serve(config: Config, root: Path, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(config, root)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
