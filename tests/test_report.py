"""`arbot report`: the campaign against its baseline, re-measured with fresh seeds; its numbers are those of
`arbot status` and `arbot audit`; the HTML page renders in a real browser (Debian's headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot import report
from bot.audit import AUDIT_SEED_OFFSET, REPORT_SEED_OFFSET, audit_win, effect_interval
from bot.config import load_config
from bot.core import lifecycle as lc
from bot.core.policy import make_policy
from bot.core.records import DEFAULT_METRIC, Decision, Proposal
from bot.forges.local import LocalForge
from bot.loop import Loop
from tests.scripted import NOISE, ScriptedProposer, ScriptedRunner, make_world
from tests.test_parity import CONFIG, STEPS, WORLD, play

ARBOT = [sys.executable, "-m", "bot"]
WIDE = {**os.environ, "COLUMNS": "400"}  # one printed line per line, as the report has them
MERGED_EFFECT = -1.1  # win, flagged, win-again, flagged-late: what the final champion adds to the start


def arbot(root, *args, timeout=600):
    return subprocess.run([*ARBOT, *args, "--repo", str(root)], capture_output=True, text=True, env=WIDE,
                          timeout=timeout)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The parity campaign (every rule, a stale replay) with its first two wins audited."""
    path = tmp_path_factory.mktemp("report") / "world"
    repo = make_world(path, CONFIG)
    config = load_config(path / "arbot.yml")
    forge = LocalForge(repo)
    forge.ensure_champion()
    runner = ScriptedRunner(repo, WORLD)
    loop = Loop(forge, runner, ScriptedProposer(*[s for s in STEPS if not s.startswith("approve")]),
                make_policy(config.policy), config.target)
    play(loop, forge)
    for rec in forge.experiments()[:6]:
        if rec.merged_as:
            audit_win(forge, runner, rec, runs=3, alpha=0.05, metric=DEFAULT_METRIC, at="now")
    return path, forge, runner


def test_the_final_champion_is_re_measured_against_the_start_with_fresh_seeds(scripted, tmp_path):
    path, forge, runner = scripted
    start = report.first_champion(forge)
    assert start == forge.experiments()[0].parent and start != forge.champion()
    c = report.compare(forge, DEFAULT_METRIC, start, forge.champion(), runner, runs=3)
    seeds = list(range(REPORT_SEED_OFFSET, REPORT_SEED_OFFSET + 3))
    assert c.remeasured and c.seeds == seeds  # never a seed a decision or an audit used
    assert c.baseline_values == pytest.approx([3.0 + NOISE[s % len(NOISE)] for s in seeds])
    assert c.final_values == pytest.approx([3.0 + MERGED_EFFECT + NOISE[s % len(NOISE)] for s in seeds])
    assert c.effect == pytest.approx(-MERGED_EFFECT) and 0 < c.low < c.effect < c.high and c.p_value < 1e-4
    md, page = report.write(report.build(forge, DEFAULT_METRIC, c, tmp_path), tmp_path)
    text = md.read_text()
    assert f"Improvement: +1.1000 (+{1.1 / 3.0:.1%} of the baseline), 95% interval [+{c.low:.4f}, +{c.high:.4f}]" in text
    assert "re-measured now with 3 fresh seeds each (5000..5002)" in text


class Recording:
    """A runner that says which commits and seeds it trained (the runs themselves: the scripted world's)."""

    def __init__(self, runner):
        self.runner, self.target, self.calls = runner, runner.target, []

    def run(self, commit, champion, seed=0, **kw):
        self.calls.append((commit, seed))
        return self.runner.run(commit, champion, seed=seed, **kw)


def test_beside_a_second_runner_each_seeds_baseline_trains_on_it(scripted, tmp_path):
    """Where the campaign ran two workers, the report measures under that load, as `arbot audit` does."""
    path, forge, runner = scripted
    start, final = report.first_champion(forge), forge.champion()
    first, second = Recording(runner), Recording(runner)
    c = report.compare(forge, DEFAULT_METRIC, start, final, first, runs=2, beside=second)
    assert first.calls == [(final, s) for s in c.seeds] and second.calls == [(start, s) for s in c.seeds]
    assert c.beside and c.effect == pytest.approx(-MERGED_EFFECT)
    md, _ = report.write(report.build(forge, DEFAULT_METRIC, c, tmp_path), tmp_path)
    assert "each seed's two runs at once on two workers" in md.read_text()
    alone = report.compare(forge, DEFAULT_METRIC, start, final, runner, runs=2)
    assert not alone.beside
    md, _ = report.write(report.build(forge, DEFAULT_METRIC, alone, tmp_path), tmp_path)
    assert "at once" not in md.read_text()


def test_its_numbers_are_those_of_arbot_status_and_arbot_audit(scripted, tmp_path):
    path, forge, runner = scripted
    out = arbot(path, "report", "--from-notes", "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stdout + out.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    status = arbot(path, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    shared = [line for line in status.stdout.splitlines() if line.split(":")[0] in
              {"runner seconds", "cost per confirmed improvement", "regression rate", "stale rate",
               "champion trajectory (val_bpb, one step per merged win)"} or line.startswith("experiments:")]
    assert len(shared) == 6, status.stdout
    for line in shared:
        assert f"- {line}" in text, line
    assert "stale rate: 10% (1 of 10 decided" in text and "regression rate: 0% of 2 audited wins" in text
    for rec in forge.experiments():
        if rec.merged_as:  # each merged win, with its effect, its rule and its audit as `arbot audit` printed it
            row = next(line for line in text.splitlines() if line.startswith(f"| {rec.id} |"))
            assert f"| {DEFAULT_METRIC.fmt(rec.decision.delta, signed=True)} | {rec.decision.rule} |" in row
            if rec.audits:
                a = rec.audits[-1]
                assert a.seeds[0] >= AUDIT_SEED_OFFSET
                low, high = effect_interval(a, DEFAULT_METRIC)
                assert low < a.effect < high
                assert (f"yes (effect {a.effect:+.4f}, 95% interval {low:+.4f}..{high:+.4f}, p={a.p_value:.3g}; "
                        f"seeds {a.seeds})") in row
            else:
                assert "not audited" in row
    assert "from the runs recorded in the notes" in text and "Improvement: +" in text
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page  # self-contained: the plot inside, nothing fetched
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_a_baseline_that_is_no_commit_is_one_clear_error(scripted, tmp_path):
    path, _, _ = scripted
    out = arbot(path, "report", "--baseline", "no-such-ref", "--out", str(tmp_path))
    assert out.returncode == 2 and "no-such-ref" in out.stdout and "Traceback" not in out.stdout + out.stderr


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1200,1600"]


def screenshot(page: Path, png: Path, profile: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run installs it)")
    shot = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.is_file(), shot.stdout + shot.stderr


@pytest.mark.slow
def test_report_on_a_real_campaign_matches_audit_and_renders_in_chromium(research_repo, tmp_path):
    import matplotlib.image

    root = Path(research_repo.working_tree_dir)
    ran = arbot(root, "run", "-n", "1")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    forge = LocalForge(research_repo)
    # a merged win of a real change (the decision is written here: what matters is what report and audit measure)
    script = (research_repo.commit(forge.champion()).tree / "target/train.py").data_stream.read().decode()
    proposal = Proposal(proposer="test", hypothesis="Fewer steps of warm-up",
                        files={"target/train.py": script + "\n# tuned by hand\n"})
    rec = forge.open_experiment(proposal, forge.champion(), started_at="t")
    rec.decision = Decision(verdict="win", rule="margin", reason="r", champion_mean=3.3, candidate_mean=3.2, effect=0.1)
    rec.merged_as = forge.promote(rec, lc.trailers(rec, rec.decision, DEFAULT_METRIC))
    forge.save(rec)

    audit = arbot(root, "audit", rec.id, "--runs", "2")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    printed = re.search(r"\((effect [+-][0-9.]+, 95% interval [+-][0-9.]+\.\.[+-][0-9.]+, p=[^;]+; "
                        r"seeds \[[0-9, ]+\])\)", audit.stdout)
    assert printed, audit.stdout
    out = arbot(root, "report", "--runs", "2", "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stdout + out.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert printed.group(1) in text  # the audit's numbers, as `arbot audit` printed them
    assert "re-measured now with 2 fresh seeds each (5000..5001)" in text
    assert re.search(r"Improvement: [+-][0-9.]+ \([+-][0-9.]+% of the baseline\), 95% interval \[[+-][0-9.]+, "
                     r"[+-][0-9.]+\]", text), text
    status = arbot(root, "status")
    for line in status.stdout.splitlines():
        if line.startswith(("cost per confirmed improvement", "regression rate", "stale rate", "runner seconds")):
            assert f"- {line}" in text, line

    png = tmp_path / "page.png"
    screenshot(tmp_path / "out" / "report.html", png, tmp_path / "chromium-profile")
    pixels = matplotlib.image.imread(png)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    ink = (pixels.min(axis=2) < 0.9).mean()  # anything not near white: text, tables, the plot
    colours = len({tuple(p) for p in (pixels[::7, ::7].reshape(-1, 3) * 255).astype(int)})
    assert ink > 0.02 and colours > 50, (ink, colours)  # text and the plot's colours, not a blank or error page
