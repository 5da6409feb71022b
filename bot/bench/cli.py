"""`arbot bench ...`: benchmarks of arbot's own machinery. Mounted by bot.cli as `app.add_typer(bench_app, name="bench")`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

from runner.config import Direction

HEADERS = {  # the table's columns (the JSON has every metric of METRICS)
    "false_promotion_rate": "false promotions",
    "worse_promotion_rate": "worse promoted",
    "power": "power (>=2 sd)",
    "runs_per_experiment": "runs / exp.",
    "true_improvement": "true improvement (sd)",
    "true_improvement_per_100_runs": "per 100 runs (sd)",
    "cost_per_confirmed_improvement": "runs / real win",
    "keep_rate": "keep rate",
}
BASELINE_RULE = "greedy"  # the rule the others' improvement per 100 runs is compared with
BOUND_FDR = 0.05  # the false-promotion share the bound is solved for

bench_app = typer.Typer(help="Benchmarks of arbot itself (promotion policy simulation, capacity by simulation).",
                        no_args_is_help=True)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks of arbot itself."""


def _num(x: float) -> float | None:
    return None if (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else round(x, 4)


@bench_app.command("policy")
def policy(
    campaigns: int = typer.Option(None, min=1, help="Simulated research campaigns per mix (default: 200 for the default mix, 80 for the others)."),
    experiments: int = typer.Option(None, min=1, help="Experiments (proposals) per campaign (default: 50 for the default mix, 125 for the others)."),
    seed: int = typer.Option(0, help="Seed of the numpy Generators: same seed, same numbers."),
    sigma: float = typer.Option(1.0, min=1e-9, help="Noise sd of one run in metric units (0.04 mirrors the CPU target); results are in sigma units."),
    pair_correlation: float = typer.Option(None, min=0.0, max=0.99, help="Correlation of same-seed champion and candidate runs, for every mix (default: each mix's own, 0 but for half_paired's 0.8)."),
    bound_samples: int = typer.Option(20_000, min=0, help="Proposals the bound beside each mix is measured on (0: no bound)."),
    direction: Direction = typer.Option(
        "minimize", help="minimize or maximize: how the rules are shown the metric (the results are the same)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: {rule: {metric: value}} for the default mix, and every mix under 'mixes'."),
) -> None:
    """Compare promotion rules on simulated campaigns of four proposal mixes: arbot (its defaults: noise_aware, the
    holdout runs charged; arbot_no_holdout without them), bayes (the learning rule, likewise), greedy (autoresearch's loop: one run, keep if
    better, the kept run becomes the champion's value), fixed_t (5 seeds each, Welch t); beside each mix, the bound
    (bot.bench.bound: the best any rule can do at 5% false promotions), with and without a holdout run per win."""
    from bot.bench.bound import bound  # the simulations (scipy.stats) are imported by the command that runs them
    from bot.bench.policy_sim import METRICS, SCENARIOS, SimConfig, run_benchmark

    mixes = {}
    for name, scenario in SCENARIOS.items():
        sim = SimConfig.of(scenario, campaigns=campaigns, experiments=experiments, seed=seed, sigma=sigma,
                           pair_correlation=pair_correlation, direction=direction)
        results = run_benchmark(sim)
        mixes[name] = {"about": scenario.about, "mix": asdict(sim.mix), "campaigns": sim.campaigns,
                       "experiments": sim.experiments, "pair_correlation": sim.pair_correlation,
                       "rules": {rule: {k: _num(v[k]) for k in METRICS} for rule, v in results.items()}}
        if bound_samples:
            mixes[name]["bound"] = {
                label: {k: _num(v) for k, v in bound(sim.mix, BOUND_FDR, holdout, pair_correlation=sim.pair_correlation,
                                                     n=bound_samples).items()}
                for label, holdout in (("holdout", 1.0), ("no_holdout", 0.0))}
    if as_json:
        typer.echo(json.dumps({**mixes["default"]["rules"], "mixes": mixes}))
        return
    console = Console(width=max(200, Console().width))
    for name, m in mixes.items():
        console.print(_table(name, m, seed, sigma))


def _table(name: str, m: dict, seed: int, sigma: float) -> Table:
    from bot.bench.policy_sim import SCENARIOS

    mix = SCENARIOS[name].mix
    table = Table(title=f"mix '{name}': {m['about']}\n{mix.describe()}, same-seed rho {m['pair_correlation']:g}; "
                        f"{m['campaigns']} campaigns x {m['experiments']} experiments, seed {seed}, noise sd {sigma:g} "
                        f"(effects in sd units)")
    table.add_column("rule")
    for k in HEADERS:
        table.add_column(HEADERS[k], justify="right")
    table.add_column(f"per 100 runs / {BASELINE_RULE}", justify="right")
    base = m["rules"][BASELINE_RULE]["true_improvement_per_100_runs"]

    def ratio(per100: float | None) -> str:
        return "-" if per100 is None or not base or base <= 0 else f"{per100 / base:.2f}"

    def cell(v: dict, k: str) -> str:
        if v[k] is None:
            return "-"
        if k == "false_promotion_rate":  # with its counts: 1 of 11 is no measure of a 5% rate
            return f"{v[k]:.3f} ({v['false_promotions']} of {v['promotions']})"
        return f"{v[k]:.3f}"

    for rule, v in m["rules"].items():
        table.add_row(rule, *(cell(v, k) for k in HEADERS), ratio(v["true_improvement_per_100_runs"]))
    for label, b in m.get("bound", {}).items():
        row = {"false_promotion_rate": b["false_promotion_rate"], "power": b["power"],
               "runs_per_experiment": b["runs_per_experiment"], "true_improvement_per_100_runs": b["per_100_runs"],
               "keep_rate": b["keep_rate"]}
        table.add_row(f"bound ({label.replace('_', ' ')})",
                      *("-" if row.get(k) is None else f"{row[k]:.3f}" for k in HEADERS), ratio(b["per_100_runs"]))
    return table


@bench_app.command("capacity")
def capacity(
    experiments: int = typer.Option(1000, min=1, help="Experiments (proposals) per simulated campaign."),
    workers: list[int] = typer.Option([8, 64], "--workers", min=1, help="Simulated workers (and experiments in "
                                      "flight) of each campaign; repeat for several campaigns."),
    seed: int = typer.Option(0, help="Seed of the proposal mix, the run durations and the noise."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per campaign."),
) -> None:
    """Campaigns through the real stepper, lifecycle, local forge and loop with a simulated executor (synthetic run
    durations, scripted results, no training): decisions per second, the bot's seconds per decision by history
    size, worker utilisation, and `arbot status` on the finished campaign."""
    from bot.bench.capacity import HISTORY_MARKS, campaign

    console = Console(width=max(180, Console().width))
    table = Table(title=f"capacity: {experiments} simulated experiments per campaign, seed {seed} (bot seconds per "
                        "decision: mean of the 20 decisions, or 2 x the workers, from that history size on; `arbot "
                        "status` at 1000 decided experiments, else at the end)")
    for col in ("workers", "decided", "wins", "bot s", "decisions/s", "utilisation", "virtual h", "status s",
                *(f"s/decision @{m}" for m in HISTORY_MARKS)):
        table.add_column(col, justify="right")
    for n in workers:
        c = campaign(n, experiments, seed)
        if as_json:
            typer.echo(json.dumps({**asdict(c), "decisions_per_second": c.decisions_per_second}))
            continue
        table.add_row(str(n), str(c.decided), str(c.wins), f"{c.bot_seconds:.1f}", f"{c.decisions_per_second:.2f}",
                      f"{c.utilisation:.1%}", f"{c.virtual_hours:.1f}",
                      "-" if c.status_seconds is None else f"{c.status_seconds:.2f}",
                      *(f"{c.per_decision[m]:.3f}" if m in c.per_decision else "-" for m in HISTORY_MARKS))
    if not as_json:
        console.print(table)
