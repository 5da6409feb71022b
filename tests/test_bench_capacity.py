"""`arbot bench capacity`'s simulated campaign: the real stepper, lifecycle, forge and loop through a campaign with
a simulated executor (bot.bench.capacity). What it reports is measured by the benchmark itself; here, that the
campaign completes and its accounting adds up."""

from bot.bench.capacity import SimExecutor, campaign, effects, train_py
from bot.core.records import RunSpec


def test_a_simulated_campaign_completes_and_keeps_its_workers_busy_while_it_proposes(tmp_path):
    c = campaign(workers=3, experiments=12, seed=1, status=False, where=tmp_path)
    assert c.decided >= 12  # a replay of a stale experiment is one more decision
    assert 0.5 < c.utilisation <= 1.0 and c.virtual_hours > 0
    assert 0 < c.bot_seconds <= c.wall_seconds and 0 in c.per_decision


def test_the_simulated_executor_runs_at_most_its_workers_in_virtual_time(tmp_path):
    import git

    repo = git.Repo.init(tmp_path / "r")
    sim = SimExecutor(repo, slots=2, seed=0)
    specs = [RunSpec(role="champion", commit="c" * 40, champion="c" * 40, seed=s) for s in range(3)]
    for s in specs:
        sim.submit(s, None)
    assert len(sim.running) == 2 and len(sim.queue) == 1
    sim.cancel(specs[2])
    assert sim.queue == [] and sim.utilisation(10.0) > 0.99  # both workers busy from (about) 0


def test_a_marker_carries_its_effect_into_every_script_that_holds_it():
    text = train_py(3).replace("# slot 2\n", "# bench: p2 -0.0500\n")
    assert effects(text) == -0.05 and effects(train_py(3)) == 0
