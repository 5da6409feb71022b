"""`arbot bench ...`: benchmarks of arbot's own machinery. Mounted by bot.cli as `app.add_typer(bench_app, name="bench")`."""

from __future__ import annotations

import json
import math

import typer
from rich.console import Console
from rich.table import Table

from bot.bench.policy_sim import METRICS, SimConfig, run_benchmark
from runner.config import Direction

HEADERS = {
    "false_promotion_rate": "false promotions",
    "power": "power (>=2 sd)",
    "runs_per_experiment": "runs / experiment",
    "true_improvement": "true improvement (sd)",
    "cost_per_confirmed_improvement": "runs / real win",
}

bench_app = typer.Typer(help="Benchmarks of arbot itself (promotion policy simulation).", no_args_is_help=True)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks of arbot itself."""


def _num(x: float) -> float | None:
    return None if (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else round(x, 4)


@bench_app.command("policy")
def policy(
    campaigns: int = typer.Option(200, min=1, help="Simulated research campaigns."),
    experiments: int = typer.Option(50, min=1, help="Experiments (proposals) per campaign."),
    seed: int = typer.Option(0, help="Seed of the numpy Generators: same seed, same numbers."),
    sigma: float = typer.Option(1.0, min=1e-9, help="Noise sd of one run in metric units (0.04 mirrors the CPU target); results are in sigma units."),
    pair_correlation: float = typer.Option(0.0, min=0.0, max=0.99, help="Correlation of same-seed champion and candidate runs (0: conservative)."),
    direction: Direction = typer.Option(
        "minimize", help="minimize or maximize: how the rules are shown the metric (the results are the same)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {rule: {metric: value}}."),
) -> None:
    """Compare promotion rules on simulated campaigns: arbot (noise-aware defaults), greedy (one run, keep if better), fixed_t (5 seeds each, Welch t)."""
    sim = SimConfig(campaigns=campaigns, experiments=experiments, seed=seed, sigma=sigma,
                    pair_correlation=pair_correlation, direction=direction)
    results = run_benchmark(sim)
    out = {rule: {k: _num(v[k]) for k in METRICS} for rule, v in results.items()}
    if as_json:
        typer.echo(json.dumps(out))
        return
    table = Table(
        title=f"Promotion rules: {campaigns} campaigns x {experiments} experiments, seed {seed}, noise sd {sigma:g} (effects in sigma units)"
    )
    table.add_column("rule")
    for k in METRICS:
        table.add_column(HEADERS[k], justify="right")
    for rule, v in out.items():
        table.add_row(rule, *("-" if v[k] is None else f"{v[k]:.3f}" for k in METRICS))
    Console(width=max(120, Console().width)).print(table)
