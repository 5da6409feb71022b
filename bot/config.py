"""`arbot.yml`: the pydantic schema and a loader whose errors name the key, the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.policy import PolicyConfig

CONFIG_FILE = "arbot.yml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetConfig(Strict):
    """What is trained and how: the runner reads this section."""

    script: str = Field("target/train.py", description="the training script, relative to the repository root")
    allowed_paths: list[str] = Field(
        default_factory=lambda: ["target/train.py"],
        description="glob patterns of the paths a proposal may change; any other changed path is rejected before training",
    )
    budget_seconds: float = Field(20.0, gt=0, description="training time budget per run, in seconds")
    grace_seconds: float = Field(
        40.0, ge=0, description="extra wall-clock time for start-up and export before the run is killed as a timeout"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where training runs")
    overrides: dict[str, float | int] = Field(
        default_factory=dict, description="knob values passed to train.py with --set (scale the model to a GPU)"
    )
    threads: int = Field(0, ge=0, description="CPU threads for training and evaluation; 0 = all cores")


class EvaluatorConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="where the evaluator scores the model")
    cache_dir: str | None = Field(None, description="where the data splits are prepared; default ~/.cache/arbot")


class KnobRange(Strict):
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float] | None = None


class SearchConfig(Strict):
    seed: int = Field(0, description="seed of the Optuna sampler")
    knobs: dict[str, KnobRange] = Field(default_factory=dict, description="ranges per knob; others use defaults")
    exclude: list[str] = Field(default_factory=list, description="knobs the search never changes")


class RunConfig(Strict):
    proposer: Literal["search"] = Field("search", description="which proposer makes experiments")
    experiments: int | None = Field(None, ge=1, description="how many experiments `arbot run` makes; none = until interrupted")
    champion_branch: str = Field("champion", description="the branch that holds the best version")
    branch_prefix: str = Field("arbot/exp-", description="experiment branches are named <prefix><n>")
    results_file: str = Field("results.tsv", description="where `arbot run` exports the experiment table")


class GitHubAuthConfig(Strict):
    """How the bot authenticates: a GitHub App installation (check runs) or, failing that, a token (commit statuses)."""

    token_env: str = Field(
        "ARBOT_GITHUB_TOKEN",
        description="environment variable holding a personal access token; never the Actions GITHUB_TOKEN "
        "(events made with it start no workflows)",
    )
    app_id: int | None = Field(None, description="GitHub App id; with private_key_path and installation_id, App auth is used")
    private_key_path: str | None = Field(None, description="path to the App's private key (PEM)")
    installation_id: int | None = Field(None, description="the App's installation id on the repository's owner")

    @property
    def is_app(self) -> bool:
        return self.app_id is not None and self.private_key_path is not None and self.installation_id is not None


class GitHubConfig(Strict):
    """GitHub mode: one PR per experiment, evaluated by a workflow on a GPU runner, decided by the bot."""

    repo: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name of the repository")
    base_url: str = Field(
        "https://api.github.com", description="REST API root: https://api.github.com or https://HOST/api/v3 (GHE)"
    )
    auth: GitHubAuthConfig = Field(default_factory=GitHubAuthConfig)
    webhook_secret_env: str = Field("ARBOT_WEBHOOK_SECRET", description="environment variable holding the webhook secret")
    state_path: str = Field(".arbot/server.sqlite", description="the server's SQLite state (handled deliveries, budget)")
    max_in_flight: int = Field(1, ge=1, description="experiments open at once (one per GPU runner)")
    experiments_per_day: int | None = Field(None, ge=0, description="stop proposing after this many experiments a day (UTC)")
    runner_minutes_per_day: float | None = Field(
        None, ge=0, description="stop proposing after the runners used this many minutes a day (UTC)"
    )
    paused: bool = Field(False, description="when true the bot decides open PRs but proposes nothing new")


class Config(Strict):
    target: TargetConfig = Field(default_factory=TargetConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    github: GitHubConfig = Field(default_factory=GitHubConfig)


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where, what and how to fix it."""


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """Describe what is allowed at `loc`: the keys of the section that holds it."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return "allowed keys here: " + ", ".join(model.model_fields)


def describe_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; {_allowed(Config, e['loc'])}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {value!r})")
    lines.append("Fix these keys in the file (see the config reference in README.md) and run again.")
    return "\n".join(lines)


def load_config(path: Path | None) -> Config:
    """Load `arbot.yml` (or the defaults when the file is absent)."""
    if path is None or not path.exists():
        return Config()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections ({', '.join(Config.model_fields)})")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, str(path))) from e
