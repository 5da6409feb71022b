"""`arbot.yml`: the pydantic schema and a loader whose errors name the key, the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from bot.core.policy import PolicyConfig
from bot.core.records import Metric
from runner.config import EvaluatorConfig, Strict, TargetConfig

CONFIG_FILE = "arbot.yml"


class KnobRange(Strict):
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float] | None = None


class SearchConfig(Strict):
    seed: int = Field(0, description="seed of the Optuna sampler")
    sampler: Literal["tpe", "random"] = Field(
        "tpe", description="tpe: random for 10 experiments, then Optuna's TPE; random: random search throughout")
    knobs: dict[str, KnobRange] = Field(default_factory=dict, description="ranges per knob; others use defaults")
    exclude: list[str] = Field(
        default_factory=lambda: ["EVAL_BATCH"],
        description="knobs the search never changes (EVAL_BATCH only shapes the exported model)",
    )


class LLMPrices(Strict):
    prompt: float = Field(0.0, ge=0, description="USD per 1M prompt (input) tokens")
    completion: float = Field(0.0, ge=0, description="USD per 1M completion (output) tokens")


class SmokeConfig(Strict):
    """The CPU smoke run every LLM candidate must pass before it becomes an experiment."""

    enabled: bool = Field(True, description="run the candidate for a few steps on the CPU before any branch exists")
    budget_seconds: float = Field(1.0, gt=0, description="training seconds of the smoke run")
    timeout_seconds: float = Field(120.0, gt=0, description="wall-clock limit of the smoke run, start-up and export included")
    overrides: dict[str, float | int] = Field(
        default_factory=lambda: {"DEPTH": 1, "N_EMBD": 32, "N_HEAD": 2, "SEQ_LEN": 32, "BATCH_SIZE": 4},
        description="knob values for the smoke run (a tiny model); knobs the candidate lacks are skipped",
    )
    threads: int = Field(1, ge=0, description="CPU threads of the smoke run; 0 = all cores")


class LLMConfig(Strict):
    """The LLM proposer: any OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server)."""

    base_url: str | None = Field(None, description="endpoint root, e.g. http://localhost:8000/v1; default $OPENAI_BASE_URL, else OpenAI")
    model: str | None = Field(None, description="model name as the endpoint knows it (or `arbot run --model`)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (local endpoints need none)")
    timeout_seconds: float = Field(120.0, gt=0, description="seconds to wait for one answer")
    max_retries: int = Field(3, ge=0, description="retries of 429, 5xx and timeouts, with exponential backoff")
    max_repairs: int = Field(2, ge=0, description="times a refused answer goes back to the model with the exact error")
    prompt_token_budget: int = Field(24000, ge=500, description="prompt size limit (tokens estimated as characters/4); oldest history is cut first")
    temperature: float | None = Field(None, ge=0, description="sampling temperature; none = the endpoint's default")
    structured_output: bool = Field(False, description="ask for JSON (response_format json_schema); plain text is always accepted")
    prices: LLMPrices = Field(default_factory=LLMPrices, description="USD per 1M tokens, for the cost records and caps")
    max_usd_per_run: float | None = Field(None, ge=0, description="stop proposing when one `arbot run` has spent this much")
    max_usd_per_day: float | None = Field(None, ge=0, description="stop proposing when today's (UTC) proposals cost this much")
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)


class AgentConfig(Strict):
    """The agent proposer: any coding agent's command (Codex CLI, Claude Code, aider, mini-swe-agent) run in a scratch
    copy of the champion; its diff goes through the LLM proposer's validation cascade (docs/proposers.md)."""

    command: list[str] = Field(
        default_factory=list, description="the agent's command line, one argument per item; placeholders {task} (the "
        "task text), {task_file} (its path), {workdir} (the scratch copy) and {out} (a folder for its report)")
    timeout_seconds: float = Field(1800.0, gt=0, description="wall-clock limit of one agent run; then it is killed "
                                   "and the proposal refused")
    env: list[str] = Field(default_factory=list, description="names of environment variables the agent gets from "
                           "arbot's (its API key, say); it sees no others but PATH, HOME, TMPDIR and LANG")
    set_env: dict[str, str] = Field(default_factory=dict, description="more variables with fixed values "
                                    "(e.g. OPENAI_BASE_URL); not for secrets (arbot.yml is committed)")
    report: Literal["text", "claude-json", "codex-jsonl", "mini-swe-agent"] = Field(
        "text", description="how to read the agent's summary and token use: text (no usage), claude-json "
        "(claude -p --output-format json), codex-jsonl (codex exec --json), mini-swe-agent (its trajectory file)")
    report_file: str | None = Field(None, description="read the report from this file in {out} (e.g. "
                                    "trajectory.json) instead of the agent's standard output")
    ignore: list[str] = Field(
        default_factory=lambda: ["*__pycache__/*", "*.pyc", ".aider*"],
        description="globs of new files the agent may leave behind that are not part of its change (caches)")
    sandbox: Literal["require", "off"] = Field(
        "require", description="require: run the agent in bubblewrap with the repository, its .git and the data "
        "cache hidden (network kept for its API); off: run it as a plain process")
    read_only: list[str] = Field(default_factory=list, description="folders the sandbox shows the agent although they "
                                 "lie in a hidden one (arbot's home, /tmp): where its program or its config lives")
    uid: int = Field(65532, ge=1, description="uid and gid a root arbot drops the agent to inside its sandbox (not "
                     "the training's or the evaluator's)")
    prices: LLMPrices = Field(default_factory=LLMPrices, description="USD per 1M tokens, when the agent reports "
                              "tokens but no cost")
    max_usd_per_run: float | None = Field(None, ge=0, description="stop proposing when one `arbot run` has spent "
                                          "this much")
    max_usd_per_day: float | None = Field(None, ge=0, description="stop proposing when today's (UTC) proposals "
                                          "cost this much")
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)


ProposerName = Literal["search", "llm", "agent"]


class RunConfig(Strict):
    proposer: ProposerName | dict[ProposerName, float] = Field(
        "search", description="which proposer makes experiments: search, llm, agent, or a mix of weights such as {llm: 0.7, search: 0.3}"
    )
    experiments: int | None = Field(None, ge=1, description="how many experiments `arbot run` makes; none = until interrupted")
    champion_branch: str = Field("champion", description="the branch that holds the best version")
    branch_prefix: str = Field("arbot/exp-", description="experiment branches are named <prefix><n>")
    results_file: str = Field("results.tsv", description="where `arbot run` exports the experiment table")
    keep_models: int | None = Field(
        5, ge=0, description="model files kept in .arbot/runs beyond the champion's and those of experiments open: "
        "the last N decided experiments' (older ones are removed after each decision; `arbot gc`); null keeps all")
    executor: Literal["local", "slurm"] = Field(
        "local", description="where `arbot run` makes its runs: local (a pool of workers on this machine) or slurm "
        "(one batch job per run; see the slurm section)")
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="local executor: runs made at once (one GPU each when CUDA_VISIBLE_DEVICES or several "
        "GPUs are present, else a share of the cores each); also how many experiments are in flight at once. auto: "
        "one per GPU, else one per target.threads cores (one each when 0), at most 4")


class SlurmConfig(Strict):
    """The Slurm executor (run.executor: slurm): each run is one `sbatch` job; the repository and the results live
    on a filesystem the nodes share."""

    partition: str | None = Field(None, description="sbatch --partition; none = the cluster's default")
    max_jobs: int = Field(2, ge=1, description="runs submitted at once (and experiments in flight)")
    cpus_per_task: int = Field(1, ge=1, description="sbatch --cpus-per-task (and the training's thread count)")
    gpus_per_task: int = Field(0, ge=0, description="sbatch --gpus-per-task; 0 = none")
    time_limit_minutes: int | None = Field(None, ge=1, description="sbatch --time; none = budget + grace + 10 min")
    extra_args: list[str] = Field(default_factory=list, description="more sbatch arguments, e.g. [--account=ml]")
    export_env: list[str] = Field(
        default_factory=list, description="environment variables a job takes from `arbot run`'s beyond PATH, HOME, "
        "USER, LANG, LC_ALL, TMPDIR, ARBOT_CACHE and XDG_CACHE_HOME (no others reach the cluster: no tokens or keys)")
    work_dir: str = Field(".arbot/slurm", description="job scripts, logs and results, relative to the repository "
                          "root (which must be on a filesystem every node mounts)")
    poll_seconds: float = Field(2.0, gt=0, description="how often squeue/sacct are asked about the jobs")


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


class AuthorCaps(Strict):
    """What one author's pull requests may spend a day (UTC), so an agent cannot take the runners (docs/github.md)."""

    experiments_per_day: int | None = Field(10, ge=0, description="adopted pull requests (each push counts) a day")
    runner_minutes_per_day: float | None = Field(
        120, ge=0, description="runner minutes the runs of an author's adopted pull requests may use a day")


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
    catch_up_minutes: float = Field(
        10, gt=0, description="arbot serve: with no webhook for this long, carry on with every active experiment "
                              "anyway (retries a refused merge, collects a run whose webhook was lost)"
    )
    evaluate_authors: list[str] = Field(
        default_factory=list, description="logins (people or bots, e.g. `copilot-swe-agent[bot]`) whose pull requests "
        "into champion from a branch of this repository are evaluated without a maintainer's label")
    close_losing_prs: bool = Field(False, description="close an adopted pull request that lost (else labelled, left open)")
    author_caps: AuthorCaps = Field(default_factory=AuthorCaps)


class MLflowConfig(Strict):
    """An MLflow tracking server that sees every run and decision (bot.tracking; `pip install arbot[tracking]`)."""

    uri: str = Field(description="the tracking URI, e.g. http://mlflow.internal:5000 (or sqlite:///mlflow.db)")
    experiment: str = Field("arbot", min_length=1, description="the MLflow experiment the campaign's runs go to")
    log_models: bool = Field(False, description="also log each run's scored model file (local runs keep it in "
                             ".arbot/runs; GitHub mode has none)")
    timeout_seconds: float = Field(10.0, gt=0, description="seconds one request to the server may take; a server "
                                   "that is down costs research no more (what it missed: `arbot track --backfill`)")

    @field_validator("uri")
    @classmethod
    def _has_scheme(cls, uri: str) -> str:
        if "://" not in uri and not uri.startswith("file:"):
            raise ValueError("a tracking URI with its scheme, e.g. http://localhost:5000 or sqlite:///mlflow.db")
        return uri


class TrackingConfig(Strict):
    """Experiment tracking, off unless a tracker is configured."""

    mlflow: MLflowConfig | None = Field(None, description="log runs and decisions to this MLflow server")


class Config(Strict):
    target: TargetConfig = Field(default_factory=TargetConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    github: GitHubConfig = Field(default_factory=GitHubConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @property
    def metric(self) -> Metric:
        """The metric that decides, from the evaluator section."""
        return Metric.of(self.evaluator)


def local_sandbox(config: Config, proposer: str | None = None) -> str | None:
    """target.sandbox for a local `arbot run` (`proposer`: its --proposer): as configured; unset, `auto` when the
    search is the only proposer (the local demo: it only changes knob values of code already in the repository),
    else unset, which the runner reads as `require` (as everywhere else: GitHub mode, `arbot evaluate`)."""
    spec = proposer or config.run.proposer
    names = {spec} if isinstance(spec, str) else {name for name, weight in spec.items() if weight > 0}
    return "auto" if config.target.sandbox is None and names == {"search"} else config.target.sandbox


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


YAML_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}  # what YAML 1.1 reads as a boolean


def yaml_word(key: object, value: object) -> str:
    """The fix where YAML read a word meant as text as a boolean (`sandbox: off` is False): quote it."""
    if not isinstance(value, bool):
        return ""
    words = YAML_WORDS[value]
    return f"; YAML reads unquoted {'/'.join(words)} as the boolean {value}: quote the word you meant (e.g. {key}: \"{words[0]}\")"


def describe_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; {_allowed(Config, e['loc'])}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {value!r}){yaml_word(e['loc'][-1], value)}")
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
