"""`arbot doctor --smoke` (bot/doctor.py check_smoke): the champion trained for a second and scored by its evaluator,
sandboxed, as a run makes it, so what a first run would stop on shows before it: on a real repository, with the
real sandbox and evaluator, through the command line."""

from __future__ import annotations

import git
import yaml

from tests.test_doctor import commit, doctor, ready, root_of, said  # noqa: F401  (ready: the fixture)


def smoke(repo: git.Repo) -> tuple[int, str]:
    r = doctor(repo, "--smoke")
    return r.exit_code, said(r.output)


def test_a_ready_repository_trains_and_scores_in_the_smoke_run(ready):
    code, text = smoke(ready)
    assert code == 0, text
    assert "ok smoke run: trained 1 s and scored in" in text and "holdout_loss" in text and "val_loss" in text
    assert "ready for `arbot run`" in text


def test_a_wrong_artifact_name_fails_the_smoke_run_not_the_first_run(ready):
    config = yaml.safe_load((root_of(ready) / "arbot.yml").read_text())
    config["target"]["artifact"] = "weights.npz"  # the script writes model.pt2
    (root_of(ready) / "arbot.yml").write_text(yaml.safe_dump(config))
    commit(ready, "the wrong artifact")
    assert doctor(ready).exit_code == 0  # without --smoke nothing trains: it looks ready
    code, text = smoke(ready)
    assert code == 1, text
    assert "FAIL smoke run: the champion's 1 s run ended" in text and "weights.npz" in text
    assert "a run is blocked by 1 check(s): smoke run" in text


def test_a_debug_print_in_score_fails_the_smoke_run(ready):
    main = root_of(ready) / "evaluator/__main__.py"
    text = main.read_text()
    marker = '    loss = json.loads(pathlib.Path(model).read_text())["loss"]\n'
    assert marker in text
    main.write_text(text.replace(marker, marker + '    print("debug: loss is", loss)\n'))
    commit(ready, "a debug print in score")
    code, out = smoke(ready)
    assert code == 1, out
    assert "FAIL smoke run:" in out and "debug: loss is" in out, out
