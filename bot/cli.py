"""The `arbot` command line."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from pathlib import Path
from statistics import mean, stdev
from typing import Optional

import git
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.audit import audit_summary, audit_win, regression_rate, revert_win
from bot import report as campaign_report
from bot import retention
from bot.bench.cli import bench_app
from bot.config import CONFIG_FILE, Config, ConfigError, load_config, local_sandbox
from bot.forges.local import ForgeError, LocalForge
from bot.executors import Executor
from bot.executors.pool import Inline, LocalPool, pool_shares, shares, worker_count
from bot.loop import Loop, export_results
from bot.stepper import RunsLost, now
from bot.surfaces.local import ChampionBroken
from bot.plot import plot as draw
from bot.progress import champion_steps, live, lost_line, lost_runs, trajectory
from bot.core.policy import make_policy
from bot.proposers.base import ProposalError
from bot.proposers.factory import make_proposer
from bot.proposers.failures import ProposalRejected
from bot.core.records import ChampionRecord, ExperimentRecord, Metric, ok_metric, verdict_text
from bot.results import results_table, row
from bot.signing import KEYS_FILE
from bot.tracking import make_tracker
from runner.config import TargetConfig
from runner.result import clean_text
from runner.job import ChampionTiming, EvaluatorError, Runner, champion_timing

app = typer.Typer(help="arbot: automated ML research, one experiment per branch, a fixed evaluator, noise-aware promotion.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(bench_app, name="bench")
console = Console(emoji=False)  # run keys such as "exp-1:abc:seed-0" are not :emoji: codes


def shown(text: object) -> str:
    """Text from a record, a candidate, a model or an LLM, for console.print: control characters removed and rich
    markup escaped (printed as written: `[idx]` in a traceback stays, `[link=...]` stays text)."""
    return escape(clean_text(str(text)))


class Project:
    """The repository arbot works on, its config and the parts built from it."""

    def __init__(self, repo_dir: Path, config: Optional[Path]):
        try:
            self.repo = git.Repo(repo_dir, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ConfigError(f"{repo_dir} is not inside a git repository; run arbot from your project's clone")
        self.root = Path(self.repo.working_tree_dir)
        self.config: Config = load_config(config or self.root / CONFIG_FILE)
        self.forge = LocalForge(self.repo, self.config.run.champion_branch, self.config.run.branch_prefix)
        self.config_file = config or self.root / CONFIG_FILE
        self.runs_dir = self.root / retention.RUNS_DIR
        self.runner = Runner(self.repo, self.config.target, self.config.evaluator, artifacts=self.runs_dir)
        self.status_file = Path(self.repo.git_dir) / "arbot-status.json"  # a running `arbot run`'s state


@contextmanager
def clear_errors():
    """Known failures end in one clear message and exit code 2, never a traceback."""
    try:
        yield
    except (ConfigError, ForgeError, ChampionBroken, ProposalError, EvaluatorError, RunsLost) as e:
        console.print(f"[bold red]error:[/] {shown(e)}")
        raise typer.Exit(2)


class RunDisplay:
    """A progress bar per training run, fed by the training script's @progress lines."""

    def __init__(self, progress: Progress, budget: float):
        self.progress, self.budget = progress, budget

    def __call__(self, label: str, commit: str, seed: int):
        task = self.progress.add_task(f"{label} {commit[:7]} seed {seed}", total=self.budget, loss="")

        def update(p: dict) -> None:
            loss = p.get("loss")
            self.progress.update(task, completed=min(float(p.get("elapsed", 0)), self.budget),
                                 loss=f"loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
        return update


NO_SCORE = "no score"  # shown for an experiment none of whose runs was scored (a crash, a rejection)


def score_cell(rec: ExperimentRecord, metric: Metric) -> str:
    """The experiment's mean metric as shown, or NO_SCORE: never a number no run measured (results.tsv keeps
    autoresearch's 0.000000 with its status)."""
    values = ok_metric(rec.runs, metric.key())
    return metric.fmt(mean(values)) if values else NO_SCORE


def describe(rec: ExperimentRecord, metric: Metric) -> str:
    d = rec.decision
    colour = {"win": "green", "loss": "yellow"}.get(d.verdict, "red")
    score = score_cell(rec, metric)
    return (f"[bold]{rec.id}[/] {shown(rec.proposal.hypothesis)} -> [{colour}]{shown(verdict_text(d.verdict, d.rule))}"
            f"[/] {score if score == NO_SCORE else f'{metric.key()} {score}'} {shown(d.reason)}")


@app.command()
def run(
    experiments: Optional[int] = typer.Option(None, "--experiments", "-n", min=1, help="stop after N experiments (default: config, else until Ctrl-C)"),
    budget: Optional[float] = typer.Option(None, "--budget", min=0.1, help="training seconds per run (overrides target.budget_seconds)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="runs made at once on this machine, one GPU or a share of the cores each (overrides run.workers)"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local or slurm (overrides run.executor)"),
    config: Optional[Path] = typer.Option(None, "--config", help=f"config file (default: {CONFIG_FILE} at the repo root)"),
    repo: Path = typer.Option(Path("."), "--repo", help="the git repository to research in"),
    proposer: Optional[str] = typer.Option(None, "--proposer", help="search, llm or agent (overrides run.proposer)"),
    model: Optional[str] = typer.Option(None, "--model", help="the LLM proposer's model (overrides llm.model)"),
):
    """Run the research loop on this repository: propose, train, evaluate, promote wins into `champion`."""
    with clear_errors():
        p = Project(repo, config)
        if budget is not None:
            p.config.target.budget_seconds = budget
        if workers is not None:
            p.config.run.workers = workers
        if executor is not None:
            p.config.run.executor = executor
        p.config.target.sandbox = local_sandbox(p.config, proposer)
        limit = experiments or p.config.run.experiments
        p.forge.ensure_champion()
        followed = p.forge.follow_head()
        first = p.forge.champion()
        if followed:
            console.print(f"champion followed your branch from {followed[:7]} to {first[:7]} (it has no merged win "
                          "yet): its noise floor is measured again")
        for line in dirty_lines(p):
            console.print(f"[yellow]warning:[/] {shown(line)}")
        if behind := p.forge.not_adopted():
            console.print(f"note: your branch {shown(p.repo.active_branch.name)} has {behind} commit(s) "
                          f"{p.config.run.champion_branch} lacks, which no run uses; `arbot adopt "
                          f"{shown(p.repo.active_branch.name)}` brings them in")
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[loss]}"), console=console, transient=True)
        maker = make_proposer(p.config, p.repo, proposer, model, sandbox=p.runner.sandbox)
        if hasattr(maker, "check"):
            maker.check()  # an unreachable endpoint fails here, before any training
        metric = p.config.metric
        display = RunDisplay(progress, p.config.target.budget_seconds)
        tracker = make_tracker(p.config.tracking, p.repo, p.runs_dir, p.config.target.artifact)
        runs = make_executor(p, display)
        loop = Loop(p.forge, p.runner, maker, make_policy(p.config.policy), p.config.target, on_run=display,
                    metric=metric, executor=runs, status_file=p.status_file, tracker=tracker)
        results = p.root / p.config.run.results_file
        if followed:
            for rec in loop.stepper.abandon(followed):
                console.print(describe(rec, metric))
        try:
            with progress:
                done = loop.campaign(limit, CampaignReport(p.forge, results, metric, p.runs_dir, p.config.run.keep_models))
        except KeyboardInterrupt:
            # Ctrl-C may have cut a read from git's persistent cat-file process mid-answer: start fresh ones
            p.repo.git.clear_cache()
            export_results(p.forge, results, metric)
            console.print("[yellow]interrupted[/]: every finished run is saved; `arbot run` resumes where this stopped")
            raise typer.Exit(130)
        finally:
            runs.close()
            p.status_file.unlink(missing_ok=True)
            if tracker is not None and tracker.missed:
                console.print(f"[yellow]{len(tracker.missed)} record(s) could not be logged to MLflow[/] "
                              f"({p.config.tracking.mlflow.uri}): `arbot track --backfill` logs them from the notes")
        export_results(p.forge, results, metric)
        console.print(experiment_table(done, metric))
        unreadable_lines(p.forge)
        start, end = p.forge.champion_record(first), p.forge.champion_record(p.forge.champion())
        console.print(f"champion {start.commit[:7]} -> {end.commit[:7]}: {champion_summary(start.runs, metric)} -> "
                      f"{champion_summary(end.runs, metric)}; results in {results}")
        if loop.stopped is not None:
            console.print(f"[yellow]the campaign ended early[/]: {shown(loop.stopped.stopped)}")
            if loop.stopped.failed:
                raise typer.Exit(1)


def dirty_lines(p: Project) -> list[str]:
    """What `arbot doctor` warns of in the working tree: changes to the training code or the evaluator that no run
    sees (runs train the committed files of champion)."""
    from bot.doctor import OK, check_uncommitted, uncommitted

    check = check_uncommitted(p.config, uncommitted(p.repo), champion_exists=True)
    return [] if check.status == OK else [f"uncommitted changes: {check.detail}; {check.fix}"]


def audit_runners(p: Project) -> tuple[Runner, Runner | None]:
    """The runners an audit trains on: where `arbot run` makes runs on two or more local workers, two workers'
    shares, so each seed's candidate and baseline train at once, under the load the decision's runs had
    (`bot.audit.remeasure`); else this project's runner alone."""
    if p.config.run.executor == "slurm" or worker_count(p.config.run.workers, p.config.target) < 2:
        return p.runner, None
    first, second = (worker_runner(p, target, gpus) for target, gpus in pool_shares(p.config.target, 2))
    return first, second


def worker_runner(p: Project, target: TargetConfig, gpus: str | None) -> Runner:
    """A pool worker's runner: its own git handle, its share of the machine (`target`) and its GPUs."""
    return Runner(git.Repo(p.root), target, p.config.evaluator, artifacts=p.runs_dir, devices=gpus)


def make_executor(p: Project, on_run: RunDisplay) -> Executor:
    """Where `arbot run` makes its runs (run.executor, run.workers)."""
    if p.config.run.executor == "slurm":
        from bot.executors.slurm import Slurm

        return Slurm(p.root, p.config)
    workers = worker_count(p.config.run.workers, p.config.target)
    if workers == 1:
        p.runner.target = shares(p.config.target, 1, [])[0][0]  # its threads (threads_per_worker), as a pool worker
        return Inline(p.runner, on_run)
    return LocalPool(functools.partial(worker_runner, p), p.config.target, workers, on_run)


class CampaignReport:
    """What `arbot run` prints as experiments finish (results.tsv is written after each)."""

    def __init__(self, forge: LocalForge, results: Path, metric: Metric, runs_dir: Path | None = None,
                 keep_models: int | None = None):
        """`keep_models`: after each decision, remove the models of older experiments (bot.retention); None: keep
        every model."""
        self.forge, self.results, self.metric = forge, results, metric
        self.runs_dir, self.keep_models = runs_dir, keep_models

    def measured(self, champion: ChampionRecord) -> None:
        console.print(f"champion {champion.commit[:7]}: {champion_summary(champion.runs, self.metric)}")

    def finished(self, rec: ExperimentRecord) -> None:
        console.print(describe(rec, self.metric))
        recs = self.forge.experiments()
        self.results.write_text(results_table(recs, self.metric))
        if self.runs_dir is not None and self.keep_models is not None:
            retention.collect(self.forge, self.runs_dir, self.keep_models, recs)

    def refused(self, error: ProposalRejected) -> None:
        console.print(f"[red]proposal refused[/] (no branch made): {shown(error)}")

    def stopped(self, why: str) -> None:
        console.print(f"[yellow]{shown(why)}[/]")


def champion_summary(runs, metric: Metric) -> str:
    values = ok_metric(runs, metric.key())
    if not values:
        return "not measured"
    spread = f" ± {metric.fmt(stdev(values))}" if len(values) > 1 else ""
    return f"{metric.key()} {metric.fmt(mean(values))}{spread} ({len(values)} runs)"


def experiment_table(records: list[ExperimentRecord], metric: Metric) -> Table:
    """One row per experiment; at 80 columns the numbers stay whole and the description wraps."""
    table = Table(title="experiments")
    cols = ("experiment", "status", metric.key(), "delta", "rule", "runs", "description")
    for col in cols:
        table.add_column(col, no_wrap=col != "description", overflow="fold", ratio=1 if col == "description" else None)
    for rec in records:
        r = row(rec, metric) | {metric.key(): score_cell(rec, metric)}
        table.add_row(*(shown(r[c]) for c in cols))
    return table


@app.command()
def log(repo: Path = typer.Option(Path("."), "--repo"), config: Optional[Path] = typer.Option(None, "--config")):
    """The champion's history (from merge trailers) and every experiment (from git notes)."""
    with clear_errors():
        p = Project(repo, config)
        history = Table(title=f"{p.config.run.champion_branch} history")
        for col in ("merge", "experiment", "metric", "baseline", "delta", "rule", "proposer"):
            history.add_column(col, no_wrap=col not in ("rule", "proposer"), overflow="fold")
        for sha, t in p.forge.champion_log(adoptions=True):
            if "Adopted" in t:  # `arbot adopt`: a commit of yours merged in, its noise floor measured again
                t = {"Experiment": f"adopted {t['Adopted'][:7]}", "Rule": t.get("Reason", "")}
            history.add_row(sha[:7], *(shown(t.get(k, "")) for k in ("Experiment", "Metric", "Baseline", "Delta", "Rule",
                                                                      "Proposer")))
        console.print(history)
        recs = p.forge.experiments()
        console.print(experiment_table(recs, p.config.metric))
        lost = lost_runs(owners(p.forge, recs))
        if lost:
            table = Table(title="lost runs (the machine's failures: each was made again, none counts for a candidate)")
            for col in ("at", "of", "run", "job", "node", "reason"):
                table.add_column(col)
            for whose, run in lost:
                table.add_row(shown(run.at), shown(whose), shown(run.key), shown(run.job), shown(run.node),
                              shown(run.reason[:300]))
            console.print(table)
        refused = p.forge.failed_proposals()
        if refused:
            table = Table(title="refused proposals (no branch)")
            for col in ("at", "champion", "proposer", "stage", "answers", "cost", "hypothesis / reason"):
                table.add_column(col)
            for f in refused:
                tokens = f.cost.prompt_tokens + f.cost.completion_tokens
                table.add_row(shown(f.at), f.champion[:7], shown(f"{f.proposer} {f.model}".strip()), shown(f.stage),
                              str(len(f.attempts)), f"{tokens} tok ${f.cost.usd:.4f}",
                              shown("\n".join(x for x in (f.hypothesis, (f.reason.splitlines() or [""])[0][:200]) if x)))
            console.print(table)
        unreadable_lines(p.forge)


@app.command()
def status(repo: Path = typer.Option(Path("."), "--repo"), config: Optional[Path] = typer.Option(None, "--config")):
    """Where the research stands: champion, its noise floor, experiment counts, anything unfinished."""
    with clear_errors():
        p = Project(repo, config)
        try:
            sha = p.forge.champion()
        except (git.BadName, ValueError):
            console.print(f"no '{p.config.run.champion_branch}' branch yet: `arbot run` creates it")
            return
        recs = p.forge.experiments()
        counts: dict[str, int] = {}
        for r in recs:
            key = r.decision.verdict if r.decision else "unfinished"
            counts[key] = counts.get(key, 0) + 1
        console.print(f"champion {sha[:7]}: {champion_summary(p.forge.champion_record(sha).runs, p.config.metric)} "
                      "(noise floor)")
        console.print(f"experiments: {len(recs)} " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        lines = campaign_report.campaign_lines(p.forge, recs) + progress_lines(p, recs) + [models_line(p, recs)]
        for line in lines + [x for x in [lost_line(lost_runs(owners(p.forge, recs)))] if x]:
            console.print(shown(line))
        unreadable_lines(p.forge)


def owners(forge: LocalForge, recs: list[ExperimentRecord]) -> list[ExperimentRecord | ChampionRecord]:
    """Every record runs belong to: the experiments, and each champion measured (the current one included)."""
    shas = sorted({r.parent for r in recs} | {forge.champion()})
    return [*recs, *forge.champion_records(shas).values()]


def models_line(p: Project, recs: list[ExperimentRecord]) -> str:
    """The model files kept and what the campaign will keep (bot.retention)."""
    return retention.config_projection(p.config, p.root, recs).line


@app.command()
def gc(
    keep: Optional[int] = typer.Option(None, "--keep", min=0, help="decided experiments whose models are kept "
                                       "(default: run.keep_models)"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Remove the model files of old experiments from .arbot/runs: the champion's, the open experiments' and the
    last N decided experiments' stay. Records, notes, results and run summaries are never touched."""
    with clear_errors():
        p = Project(repo, config)
        n = keep if keep is not None else p.config.run.keep_models
        if n is None:
            raise ConfigError("run.keep_models is null (keep every model): give --keep N")
        removed = retention.collect(p.forge, p.runs_dir, n)
        left = retention.usage(p.runs_dir)
        console.print(f"removed {removed.files} model file(s) ({retention.mib(removed.bytes)}); "
                      f"{left.files} kept ({retention.mib(left.bytes)}) in {p.runs_dir}")


def unreadable_lines(forge: LocalForge) -> None:
    """Report the notes the forge skipped (not valid records): each with what is wrong and what to do."""
    for line in forge.unreadable_notes():
        console.print(f"[yellow]warning:[/] {shown(line)}")


def progress_lines(p: Project, recs: list[ExperimentRecord]) -> list[str]:
    """The champion's trajectory and, while an `arbot run` runs, its workers and queue."""
    lines = []
    steps = champion_steps(p.forge.champion_log())
    if steps:
        lines.append(f"champion trajectory ({p.config.metric.key()}, one step per merged win): "
                     + " -> ".join(value for _, value in steps))
    state = live(p.status_file)
    if state is None:
        lines.append("no `arbot run` is running on this repository")
    else:
        busy = ", ".join(f"{worker}: {key}" for worker, key in sorted(state["busy"].items())) or "idle"
        rate_h = state.get("runs_per_hour")
        lines.append(f"running (pid {state['pid']}, {state['in_flight']} experiments in flight at most): {busy}; "
                     f"queued runs: {state['queued']}; runs made: {state['runs_made']}"
                     + (f" ({rate_h} per hour)" if rate_h is not None else "") + f"; as of {state['updated_at']}")
        for job, why in state.get("blocked", {}).items():
            lines.append(f"not started by the cluster: {job} ({why}); `sinfo -R` says why")
    return lines


@app.command()
def plot(
    out: Path = typer.Option(Path("trajectory.png"), "--out", help="the image to write (.png, .svg or .pdf)"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """The research trajectory as an image: each experiment's metric, merged wins marked, the champion's noise band."""
    with clear_errors():
        p = Project(repo, config)
        recs = p.forge.experiments()
        champions = p.forge.champion_records({r.parent for r in recs})
        points = trajectory(recs, champions, p.config.metric)
        if not points:
            raise ConfigError("no decided experiment yet: `arbot run` first")
        written = draw(points, p.config.metric, out if out.is_absolute() else Path.cwd() / out)
        console.print(f"wrote {written} ({len(points)} experiments)")


@app.command()
def report(
    baseline: Optional[str] = typer.Option(None, "--baseline", help="the human-tuned baseline, any revision "
                                           "(default: the first champion: the campaign's starting point)"),
    runs: int = typer.Option(3, "--runs", min=2, help="fresh seeds per side for the re-measurement"),
    from_notes: bool = typer.Option(False, "--from-notes", help="compare the runs recorded in the notes; train nothing"),
    out: Path = typer.Option(Path("arbot-report"), "--out", help="the folder for report.md, report.html and the plot"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """The campaign against its baseline, in Markdown and one self-contained HTML file: both re-measured with fresh
    seeds (the improvement and its interval), each merged win with its effect, rule and replication, cost per
    confirmed improvement, regression and stale rates, the trajectory."""
    with clear_errors():
        p = Project(repo, config)
        try:
            final = p.forge.champion()
            start = p.repo.commit(baseline).hexsha if baseline else campaign_report.first_champion(p.forge)
        except (git.BadName, ValueError) as e:
            raise ConfigError(f"{baseline or p.config.run.champion_branch!r} is not a commit here ({e}): name the "
                              "baseline with --baseline REF, after a first `arbot run`") from e
        folder = out if out.is_absolute() else Path.cwd() / out
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[loss]}"), console=console, transient=True)
        with progress:
            runner, beside = (None, None) if from_notes or start == final else audit_runners(p)
            comparison = campaign_report.compare(p.forge, p.config.metric, start, final, runner, runs,
                                                 RunDisplay(progress, p.config.target.budget_seconds), at=now(),
                                                 beside=beside)
        md, page = campaign_report.write(campaign_report.build(p.forge, p.config.metric, comparison, folder), folder)
        console.print(f"wrote {md} and {page}")


@app.command()
def track(
    backfill: bool = typer.Option(False, "--backfill", help="log from the git notes every run and decision the "
                                  "tracker does not have yet"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Experiment tracking (tracking: in arbot.yml): `--backfill` logs to MLflow, from the notes, what it missed
    (after an outage, or a campaign run before tracking was set up). Safe to repeat: nothing is logged twice."""
    with clear_errors():
        p = Project(repo, config)
        if not backfill:
            raise ConfigError("nothing to do: `arbot track --backfill` logs what the tracker does not have yet")
        tracker = make_tracker(p.config.tracking, p.repo, p.runs_dir, p.config.target.artifact)
        if tracker is None:
            raise ConfigError("no tracker is configured: add tracking: {mlflow: {uri: ..., experiment: ...}} to "
                              f"{p.config_file.name} (see README, Configuration)")
        try:
            done = tracker.backfill(p.forge)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow's errors are many: each is one line here
            raise ConfigError(f"MLflow at {p.config.tracking.mlflow.uri} failed: {type(e).__name__}: {e}; nothing "
                              "is lost (the notes keep every run): run `arbot track --backfill` again") from e
        console.print(f"MLflow {p.config.tracking.mlflow.uri} (experiment {p.config.tracking.mlflow.experiment!r}): "
                      f"{done.records} records checked, {done.runs} runs logged now")


@app.command()
def evaluate(
    commit: str = typer.Argument(..., help="the candidate commit (any revision)"),
    champion: Optional[str] = typer.Option(None, "--champion", help="whose evaluator and allowed paths apply (default: the champion branch, else the commit itself)"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print the result record as JSON"),
    holdout: bool = typer.Option(False, "--holdout", help="also score the holdout split"),
    budget: Optional[float] = typer.Option(None, "--budget", min=0.1),
    champion_overhead: Optional[float] = typer.Option(
        None, "--champion-overhead", min=0, help="the champion's measured start-up and export seconds (its runs' "
        "training wall time beyond the budget): the candidate is held to budget + this + a tolerance"),
    champion_score_seconds: Optional[float] = typer.Option(
        None, "--champion-score-seconds", min=0, help="the champion's measured scoring seconds per split: the "
        "scoring deadline is evaluator.timeout_factor times this, plus 5 s (without it: evaluator.timeout_seconds)"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """The runner job on one commit: guard, train, score with the champion's evaluator; prints the result record.
    The candidate is held to the champion's measured times: given (GitHub mode, Slurm: the bot computed them),
    else computed from the champion's runs in this clone's notes."""
    with clear_errors():
        p = Project(repo, config)
        if budget is not None:
            p.config.target.budget_seconds = budget
        if champion is None:
            try:
                champion = p.forge.champion()
            except (git.BadName, ValueError):
                champion = commit
        if champion_overhead is not None and champion_score_seconds is not None:
            timing = ChampionTiming(champion_overhead, champion_score_seconds)
        else:  # the champion's recorded runs in this clone's notes, when it has them
            timing = champion_timing(p.forge.champion_record(p.repo.commit(champion).hexsha).runs,
                                     p.config.target.budget_seconds)
        splits = ("val", "holdout") if holdout else ("val",)
        result = p.runner.run(commit, champion, seed=seed, splits=splits, timing=timing)
        if as_json:
            print(result.model_dump_json(indent=2))
        else:
            console.print_json(result.model_dump_json())
        raise typer.Exit(0 if result.ok else 1)


def find_experiment(p: Project, experiment_id: str) -> ExperimentRecord:
    rec = next((r for r in p.forge.experiments() if r.id == experiment_id), None)
    if rec is None:
        raise ConfigError(f"no experiment {experiment_id!r}; `arbot log` lists them")
    return rec


@app.command()
def audit(
    experiments: Optional[list[str]] = typer.Argument(None, help="wins to audit (default: every merged win)"),
    runs: int = typer.Option(3, "--runs", min=2, help="fresh seeds per side"),
    alpha: float = typer.Option(0.05, "--alpha", help="one-sided significance a replication must reach"),
    verify: bool = typer.Option(False, "--verify", help="train nothing: check every note's signature and name "
                                "each note that does not verify (exit 1 when one does not)"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Re-run merged wins against their parents with fresh seeds; report which replicate (the regression rate).
    With --verify: check the whole history of notes instead."""
    with clear_errors():
        p = Project(repo, config)
        if verify:
            verify_notes(p.forge)
            return
        wins = [find_experiment(p, e) for e in experiments] if experiments else \
            [r for r in p.forge.experiments() if r.merged_as and not r.reverted_as]
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[loss]}"), console=console, transient=True)
        with progress:
            runner, beside = audit_runners(p)
            for rec in wins:
                a = audit_win(p.forge, runner, rec, runs, alpha, p.config.metric, at=now(),
                              on_run=RunDisplay(progress, p.config.target.budget_seconds), beside=beside)
                verdict = "[green]replicates[/]" if a.replicates else "[red]does not replicate[/]"
                console.print(f"{rec.id} {shown(rec.proposal.hypothesis)}: {verdict} "
                              f"({shown(audit_summary(a, p.config.metric))})")
        rate, audited = regression_rate(p.forge.experiments())
        if audited:
            console.print(f"regression rate: {rate:.0%} of {audited} audited wins")


def verify_notes(forge: LocalForge) -> None:
    """`arbot audit --verify`: every note under refs/notes/arbot and refs/notes/arbot-proposals checked as the
    bot reads them; exit 1 naming each one that is not a record signed by a trusted key."""
    trusted, problems = forge.verify()
    for line in forge.key_problems:
        console.print(f"[yellow]warning:[/] {shown(line)}")
    for line in problems:
        console.print(f"[red]does not verify:[/] {shown(line)}")
    console.print(f"{trusted} notes verify, {len(problems)} do not")
    if problems:
        raise typer.Exit(1)


@app.command()
def sign(
    adopt_unsigned: bool = typer.Option(False, "--adopt-unsigned", help="sign every unsigned note as it is (notes "
                                        "an arbot before signed records wrote): only once you trust them"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Show this bot's signing key and the line to commit in .github/arbot-signing-keys (created on first use);
    with --adopt-unsigned, sign the unsigned notes of an earlier history (`arbot audit --verify` lists them)."""
    with clear_errors():
        p = Project(repo, config)
        signer = p.forge.signer(create=True)
        keys, _ = p.forge.committed_keys()
        committed = any(k.id == signer.public.id for k in keys)
        console.print(f"signing key {signer.public.id} in {signer.path} "
                      + ("(in " + KEYS_FILE + " on the champion branch)" if committed else
                         f"(not in {KEYS_FILE} on {p.forge.champion_branch} yet: commit this line there, through a "
                         "reviewed PR, so that others can verify the notes)"))
        print(signer.public.line())
        if adopt_unsigned:
            adopted = p.forge.adopt_unsigned()
            for ref, commit in adopted:
                console.print(f"signed the note on {commit[:12]} under refs/notes/{ref}")
            console.print(f"{len(adopted)} unsigned notes signed; push refs/notes/arbot and refs/notes/arbot-proposals "
                          "where the notes live (GitHub mode: the bot's next event pushes them)")


@app.command()
def approve(
    experiment: str = typer.Argument(..., help="a win held for review (status `review` in results.tsv)"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Merge a win that diff inspection held for a human, after you have read its diff."""
    with clear_errors():
        p = Project(repo, config)
        loop = Loop(p.forge, p.runner, None, make_policy(p.config.policy), p.config.target, metric=p.config.metric)
        try:
            rec = loop.approve(experiment)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        export_results(p.forge, p.root / p.config.run.results_file, p.config.metric)
        if rec.merged_as:
            console.print(f"{experiment} approved and merged: {p.config.run.champion_branch} is now {rec.merged_as[:7]}")
        else:
            console.print(f"{experiment} approved, but {p.config.run.champion_branch} moved since it was measured: "
                          f"{shown(rec.decision.reason)}; the next `arbot run` measures it")


@app.command()
def adopt(
    ref: str = typer.Argument("HEAD", help="the commit to bring into champion: a branch holding a hand edit or a fixed "
                              "evaluator (default: HEAD)"),
    reason: str = typer.Option("adopted by hand", "--reason", help="recorded in the Reason: trailer"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Merge a commit of yours into champion (a merge with Adopted: and Reason: trailers); the next `arbot run`
    measures the new champion's noise floor before comparing anything with it."""
    with clear_errors():
        p = Project(repo, config)
        p.forge.ensure_champion()
        sha = p.forge.adopt(ref, reason)
        console.print(f"adopted {shown(ref)}: {p.config.run.champion_branch} is now {sha[:7]}; the next `arbot run` "
                      "measures its noise floor first")


@app.command()
def revert(
    experiment: str = typer.Argument(..., help="the merged win to roll back, e.g. exp-3"),
    reason: str = typer.Option("reverted by hand", "--reason", help="recorded in the Reason: trailer"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Roll a win back on champion with a revert commit carrying trailers (Experiment, Reverts, Reason)."""
    with clear_errors():
        p = Project(repo, config)
        try:
            sha = revert_win(p.forge, find_experiment(p, experiment), reason)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        console.print(f"{experiment} reverted: {p.config.run.champion_branch} is now {sha[:7]}; "
                      "the next `arbot run` measures it")



def github_mode_config(repo: Path, config: Optional[Path]) -> tuple[Path, Config]:
    """The repository root (or the given folder: GitHub mode may run outside a clone) and its config."""
    try:
        root = Path(git.Repo(repo, search_parent_directories=True).working_tree_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        root = repo.resolve()
    return root, load_config(config or root / CONFIG_FILE)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 behind a proxy)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """GitHub mode: the webhook server (POST /webhook, GET /healthz); the secret comes from ARBOT_WEBHOOK_SECRET."""
    from bot.server.run import serve as run_server

    with clear_errors():
        root, cfg = github_mode_config(repo, config)
        run_server(cfg, root, host, port)


@app.command()
def setup(
    owner: Optional[str] = typer.Option(None, "--owner", help="CODEOWNERS owner of evaluator/ and .github/ (e.g. @org/team); writes .github/CODEOWNERS in this clone"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """GitHub mode: create `champion`, the labels and the branch protection (requires arbot/verdict); idempotent."""
    from github import GithubException

    from bot.github.forge import GitHubForgeError, connect
    from bot.github.setup import run_setup

    with clear_errors():
        root, cfg = github_mode_config(repo, config)
        try:
            forge = connect(cfg.github, champion_branch=cfg.run.champion_branch, branch_prefix=cfg.run.branch_prefix)
            for line in run_setup(forge, root, owner):
                console.print(shown(line))
        except GitHubForgeError as e:
            raise ConfigError(str(e)) from e
        except GithubException as e:
            raise ConfigError(f"GitHub answered {e.status}: {e.data}; check github.repo, base_url and the credentials") from e


@app.command()
def init(
    script: Optional[str] = typer.Option(None, "--script", help="the training script, relative to the repository root (default: the one train*.py found)"),
    allowed: Optional[str] = typer.Option(None, "--allowed", help="comma-separated globs a proposal may change (default: the script)"),
    budget: Optional[float] = typer.Option(None, "--budget", help="training seconds per run (default: 300)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="the metric that decides, without its split (the evaluator reports val_<metric>), e.g. loss, accuracy (default: loss)"),
    direction: Optional[str] = typer.Option(None, "--direction", help="minimize or maximize (default: from the metric's name, e.g. maximize for accuracy)"),
    artifact: Optional[str] = typer.Option(None, "--artifact", help="the model file the script writes in --out, which the evaluator scores (default: the one the script names, else model.pt2)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    owner: Optional[str] = typer.Option(None, "--owner", help="CODEOWNERS owner of evaluator/ and .github/ (e.g. @org/team)"),
    arbot_package: Optional[str] = typer.Option(None, "--arbot-package", help="what the workflows pip-install as arbot: a requirement or a path (default: arbot==<this version>)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="ask nothing: what the options do not give is inferred or defaulted (as without a terminal), and said"),
    force: bool = typer.Option(False, "--force", help="overwrite files that exist and differ"),
    repo: Path = typer.Option(Path("."), "--repo"),
):
    """Set arbot up in an existing git repository: arbot.yml, the GitHub workflows, CODEOWNERS lines, .gitignore
    entries and an evaluator skeleton. In a terminal it asks for what the options do not give (the inferred value
    as the default); with --yes or no terminal it infers it and says so. Keeps every file that exists (unless
    --force)."""
    from bot.init import apply, gather, plan, repo_root

    with clear_errors():
        root = repo_root(repo)
        ask = None if yes or not sys.stdin.isatty() else typer.prompt
        answers, assumed = gather(root, ask, script=script, allowed=allowed, budget=budget, metric=metric,
                                  direction=direction, artifact=artifact, device=device, owner=owner)
        for line in assumed + apply(root, plan(root, answers, arbot_package), force):
            typer.echo(line)


@app.command()
def doctor(
    smoke: bool = typer.Option(False, "--smoke", help="also train the champion for a second and score it with the "
                               "evaluator, sandboxed, as a run does: what a first run would stop on shows here"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """Check this repository and this machine for a run: one line per check (ok, warn, FAIL) with the fix;
    exit 1 when something blocks a run (warnings do not)."""
    from bot.doctor import FAIL, WARN, diagnose

    colour = {FAIL: "bold red", WARN: "yellow"}
    checks = []
    for check in diagnose(repo, config, smoke=smoke):
        checks.append(check)
        fix = f" [dim]->[/] fix: {escape(check.fix)}" if check.fix else ""
        console.print(f"[{colour.get(check.status, 'green')}]{check.status:>4}[/] [bold]{escape(check.name)}[/]: "
                      f"{escape(check.detail)}{fix}")
    blocking = [c.name for c in checks if c.blocks]
    warned = sum(c.status == WARN for c in checks)
    if blocking:
        console.print(f"[bold red]a run is blocked[/] by {len(blocking)} check(s): {', '.join(blocking)}")
        raise typer.Exit(1)
    console.print("[green]ready for `arbot run`[/]" + (f" ({warned} warning(s))" if warned else ""))


LEASE_WAIT = 120  # seconds `arbot decide` and `arbot propose` wait for another writer's lease


@contextmanager
def github_driver(repo: Path, config: Optional[Path], command: str):
    """GitHub mode without the server (the serverless set-up): the driver `arbot serve` uses, with the same
    mirror (.arbot/github.git) and state file (github.state_path: pause switch, daily budget)."""
    from github import GithubException

    from bot.github.forge import GitHubForgeError, connect
    from bot.server.app import ServerSettings
    from bot.server.run import build_driver
    from bot.server.store import Store

    with clear_errors():
        root, cfg = github_mode_config(repo, config)
        gh = cfg.github
        state = Path(gh.state_path) if Path(gh.state_path).is_absolute() else root / gh.state_path
        store = Store(state)
        try:
            forge = connect(gh, champion_branch=cfg.run.champion_branch, branch_prefix=cfg.run.branch_prefix)
            settings = ServerSettings(secret="", state_path=state, repo=gh.repo, paused=gh.paused,
                                      experiments_per_day=gh.experiments_per_day,
                                      runner_minutes_per_day=gh.runner_minutes_per_day)
            yield build_driver(cfg, root, forge, store, settings, command=command, lease_wait=LEASE_WAIT)
        except GitHubForgeError as e:
            raise ConfigError(str(e)) from e
        except GithubException as e:
            raise ConfigError(f"GitHub answered {e.status}: {e.data}; check github.repo, base_url and the credentials") from e
        finally:
            store.close()


@app.command()
def propose(repo: Path = typer.Option(Path("."), "--repo"), config: Optional[Path] = typer.Option(None, "--config")):
    """GitHub mode without the server: open experiments up to github.max_in_flight and dispatch their first runs."""
    with github_driver(repo, config, "propose") as driver:
        opened = driver.fill()
        for rec in opened:
            console.print(f"opened {rec.id} ({rec.branch}): {shown(rec.proposal.hypothesis)}")
        if not opened:
            console.print("nothing opened: max_in_flight reached, paused or over a daily cap (see the log)")


@app.command()
def decide(
    pr: Optional[int] = typer.Option(None, "--pr", help="the experiment PR to advance (default: every active one)"),
    repo: Path = typer.Option(Path("."), "--repo"),
    config: Optional[Path] = typer.Option(None, "--config"),
):
    """GitHub mode without the server: collect reported runs and carry out what the lifecycle says for each
    active experiment (dispatch runs, verdict, comment, merge or close), record merges, open the next ones."""
    with github_driver(repo, config, "decide") as driver:
        recs = [driver.advance_pr(pr)] if pr is not None else driver.advance_all()
        for rec in recs:
            d = rec.decision
            console.print(f"{rec.id}: " + (f"{shown(verdict_text(d.verdict, d.rule))}: {shown(d.reason)}" if d else
                                            f"measuring, {len(rec.runs)} runs made, {len(rec.pending)} in flight"))
        if not recs:
            console.print("nothing to decide: no experiment is active")
