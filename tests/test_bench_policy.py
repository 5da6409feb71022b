"""The policy benchmark (`arbot bench policy`): reproducible, and arbot's acceptance numbers hold."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bot.bench.cli import bench_app
from bot.bench.policy_sim import METRICS, SimConfig, run_benchmark


@pytest.fixture(scope="module")
def default_results() -> dict:
    r = CliRunner().invoke(bench_app, ["policy", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_json_shape(default_results):
    assert set(default_results) == {"arbot", "greedy", "fixed_t"}
    for v in default_results.values():
        assert set(v) == set(METRICS)


def test_acceptance_on_default_benchmark(default_results):
    a = default_results["arbot"]
    assert a["false_promotion_rate"] <= 0.05
    assert a["power"] >= 0.80
    assert a["runs_per_experiment"] <= 2.5


def test_greedy_merges_noise(default_results):
    g, a = default_results["greedy"], default_results["arbot"]
    assert g["runs_per_experiment"] == 1.0
    assert g["false_promotion_rate"] >= 5 * a["false_promotion_rate"]
    assert g["false_promotion_rate"] > 0.3


def test_reproducible_same_seed_same_json():
    args = ["policy", "--json", "--campaigns", "10", "--experiments", "20", "--seed", "4"]
    a = CliRunner().invoke(bench_app, args).output
    b = CliRunner().invoke(bench_app, args).output
    assert a == b
    c = CliRunner().invoke(bench_app, ["policy", "--json", "--campaigns", "10", "--experiments", "20", "--seed", "5"]).output
    assert a != c


def test_sigma_units():
    """Effects are drawn in sigma units, so the metrics do not depend on the noise scale (min_effect=0)."""
    a = run_benchmark(SimConfig(campaigns=10, experiments=20, sigma=1.0))
    b = run_benchmark(SimConfig(campaigns=10, experiments=20, sigma=0.04))
    for rule in a:
        for k in METRICS:
            assert a[rule][k] == pytest.approx(b[rule][k], rel=1e-6)


def test_table_output():
    r = CliRunner().invoke(bench_app, ["policy", "--campaigns", "5", "--experiments", "10"])
    assert r.exit_code == 0, r.output
    for name in ("arbot", "greedy", "fixed_t", "promotions", "power"):
        assert name in r.output


def test_a_maximized_metric_gets_exactly_the_same_results():
    """The rules see the metric as configured: negated and maximized, every campaign ends exactly the same."""
    args = ["policy", "--json", "--campaigns", "10", "--experiments", "20"]
    low = CliRunner().invoke(bench_app, args)
    high = CliRunner().invoke(bench_app, args + ["--direction", "maximize"])
    assert low.exit_code == high.exit_code == 0 and json.loads(low.output) == json.loads(high.output)
    assert CliRunner().invoke(bench_app, args + ["--direction", "up"]).exit_code != 0
