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


class Config(Strict):
    target: TargetConfig = Field(default_factory=TargetConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    run: RunConfig = Field(default_factory=RunConfig)


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
