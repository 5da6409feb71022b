"""`arbot bench capacity`'s simulated campaign: the real stepper, lifecycle, forge and loop through a campaign with
a simulated executor (bot.bench.capacity). What it reports is measured by the benchmark itself; here, that the
campaign completes and its accounting adds up."""

from bot.bench.capacity import SimExecutor, campaign, effects, set_slot, train_py
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


def test_a_change_adds_its_effect_to_its_slot_and_keeps_the_script_s_size():
    text = set_slot(set_slot(train_py(12), 2, -0.05, "p1"), 12, 0.02, "p2")
    again = set_slot(text, 2, 0.01, "p3")  # a later change of the same slot, in place
    assert effects(train_py(12)) == 0 and round(effects(text), 4) == -0.03 and round(effects(again), 4) == -0.02
    assert len(again.splitlines()) == len(train_py(12).splitlines()) and set_slot(again, 1, 0.0, "p4") != again
