"""benchmarks/rho.py's arithmetic: the same-seed correlation of two commits, with and without the step covariate."""

from __future__ import annotations

import json
import math
import random

import pytest

from benchmarks.rho import compare, interval, read_runs

METRIC = "val_bpb"


def runs(commit: str, seed_effects: list[float], steps: list[list[int]], slope: float, offset: float,
         noise: random.Random | None = None) -> list[dict]:
    """Rows of one commit: its offset, each seed's effect, `slope` per training step, and optional run noise."""
    return [{"commit": commit, "seed": seed, "repeat": rep, "steps": n,
             METRIC: offset + effect + slope * n + (noise.gauss(0, 0.001) if noise else 0.0)}
            for seed, effect in enumerate(seed_effects) for rep, n in enumerate(steps[seed])]


def test_a_shared_seed_effect_pairs_and_a_shift_is_the_mean_difference():
    effects = [0.03, -0.02, 0.01, 0.0, -0.04, 0.02]
    steps = [[90, 90]] * len(effects)
    result = compare(runs("champion", effects, steps, 0.0, 2.0), runs("change", effects, steps, 0.0, 1.99), METRIC)
    assert result["rho"] == pytest.approx(1.0) and result["sd_paired"] == pytest.approx(0.0, abs=1e-12)
    assert result["sd_unpaired"] > 0.02 and result["mean_difference"] == pytest.approx(0.01)
    assert result["repeat_correlation"] == pytest.approx(1.0) and result["steps_range"] == [90, 90]


def test_independent_seed_effects_do_not_pair():
    rng = random.Random(3)
    a, b = [rng.gauss(0, 0.02) for _ in range(400)], [rng.gauss(0, 0.02) for _ in range(400)]
    steps = [[90]] * 400
    result = compare(runs("champion", a, steps, 0.0, 2.0), runs("change", b, steps, 0.0, 2.0), METRIC)
    assert abs(result["rho"]) < 0.15
    assert result["sd_paired"] == pytest.approx(result["sd_unpaired"], rel=0.15)


def test_a_correlation_made_by_the_step_count_is_taken_out():
    """Load moves both commits' step counts at a seed together (the runs of a seed made at the same time): their
    metrics correlate through the steps alone; less each commit's line on its steps, the seeds do not pair."""
    rng = random.Random(5)
    steps = [[rng.randint(40, 140)] for _ in range(200)]
    champion = runs("champion", [rng.gauss(0, 0.002) for _ in steps], steps, -0.001, 2.1)
    change = runs("change", [rng.gauss(0, 0.002) for _ in steps], steps, -0.0012, 2.1)
    result = compare(champion, change, METRIC)
    assert result["rho"] > 0.9 and abs(result["rho_steps_adjusted"]) < 0.2
    assert result["steps_correlation"] < -0.9
    assert result["steps_range"] == [min(n for [n] in steps), max(n for [n] in steps)]


def test_a_repeat_correlation_shows_how_deterministic_a_seed_is():
    rng = random.Random(7)
    effects = [rng.gauss(0, 0.02) for _ in range(100)]
    steps = [[90, 90]] * 100
    result = compare(runs("champion", effects, steps, 0.0, 2.0, rng), runs("change", effects, steps, 0.0, 2.0, rng),
                     METRIC)
    assert 0.95 < result["repeat_correlation"] < 1.0 and 0.95 < result["rho"] < 1.0


def test_a_cut_short_measurement_is_tabulated_from_its_printed_runs(tmp_path):
    """The runs printed before a measurement stopped: other lines skipped, only the seeds both commits reached."""
    effects = [0.03, -0.02, 0.01, 0.0]
    steps = [[90]] * len(effects)
    champion, change = runs("champion", effects, steps, 0.0, 2.0), runs("change", effects, steps, 0.0, 1.98)
    log = tmp_path / "rho.err"
    log.write_text("\n".join([*(json.dumps(r) for r in champion), "a warning from torch", json.dumps([1, 2]),
                              *(json.dumps(r) for r in change[:3])]) + "\n")
    rows = read_runs(log)
    assert len(rows) == 7
    result = compare([r for r in rows if r["commit"] == "champion"], [r for r in rows if r["commit"] == "change"],
                     METRIC)
    assert result["seeds"] == 3 and result["mean_difference"] == pytest.approx(0.02)


def test_a_file_with_no_runs_is_refused_with_its_name(tmp_path):
    log = tmp_path / "empty.err"
    log.write_text("Traceback (most recent call last):\n")
    with pytest.raises(SystemExit, match="empty.err: no runs in it"):
        read_runs(log)


def test_rho_comes_with_its_95_percent_interval():
    low, high = interval(0.5, 8)
    assert low == pytest.approx(-0.3, abs=0.05) and high == pytest.approx(0.91, abs=0.02)
    assert interval(0.5, 8, dropped=1)[0] < low  # a line fitted out first leaves fewer degrees of freedom
    assert all(math.isnan(v) for v in interval(0.5, 3) + interval(float("nan"), 8))
