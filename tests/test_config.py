from pathlib import Path

import pytest

from bot.config import Config, ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "arbot.yml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path):
    cfg = load_config(tmp_path / "missing.yml")
    assert cfg == Config()
    assert cfg.target.allowed_paths == ["target/train.py"]
    assert cfg.run.champion_branch == "champion"


def test_values_are_read(tmp_path):
    cfg = load_config(write(tmp_path, "target:\n  budget_seconds: 45\n  overrides: {DEPTH: 8}\nsearch:\n  exclude: [SEQ_LEN]\n"))
    assert cfg.target.budget_seconds == 45
    assert cfg.target.overrides == {"DEPTH": 8}
    assert cfg.search.exclude == ["SEQ_LEN"]


def test_bad_value_names_key_value_and_fix(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "target:\n  budget_seconds: soon\n"))
    msg = str(e.value)
    assert "target.budget_seconds" in msg and "'soon'" in msg and "README" in msg


def test_out_of_range_value(tmp_path):
    with pytest.raises(ConfigError, match=r"target.budget_seconds: Input should be greater than 0 \(got -3\)"):
        load_config(write(tmp_path, "target:\n  budget_seconds: -3\n"))


def test_unknown_key_lists_allowed_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"target.budget: unknown key; allowed keys here: script, allowed_paths, budget_seconds"):
        load_config(write(tmp_path, "target:\n  budget: 3\n"))
    with pytest.raises(ConfigError, match=r"targets: unknown key; allowed keys here: target, evaluator, policy"):
        load_config(write(tmp_path, "targets: {}\n"))


def test_enum_value_says_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"target.device: Input should be 'auto', 'cpu' or 'cuda' \(got 'tpu'\)"):
        load_config(write(tmp_path, "target:\n  device: tpu\n"))


def test_not_yaml_or_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "target: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_the_metric_is_configuration(tmp_path):
    assert (Config().metric.key(), Config().metric.key("holdout"), Config().metric.direction) == \
        ("val_bpb", "holdout_bpb", "minimize")  # the built-in evaluator's
    cfg = load_config(write(tmp_path, "evaluator:\n  metric: accuracy\n  direction: maximize\n  precision: 2\n"))
    m = cfg.metric
    assert (m.key(), m.key("holdout"), m.direction, m.better) == ("val_accuracy", "holdout_accuracy", "maximize", "higher")
    assert (m.fmt(0.9123), m.fmt(0.0123, signed=True), m.fmt(None)) == ("0.91", "+0.01", "n/a")


def test_a_bad_direction_names_the_key_and_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "evaluator:\n  direction: up\n"))
    msg = str(e.value)
    assert "evaluator.direction" in msg and "'minimize' or 'maximize'" in msg and "'up'" in msg


def test_a_metric_name_must_fit_a_trailer(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluator.metric: String should match pattern"):
        load_config(write(tmp_path, "evaluator:\n  metric: 'val bpb=1'\n"))


def test_workers_is_a_number_or_auto(tmp_path):
    assert load_config(tmp_path / "missing.yml").run.workers == "auto"
    assert load_config(write(tmp_path, "run:\n  workers: 3\n")).run.workers == 3
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "run:\n  workers: many\n"))
    assert "run.workers" in str(e.value) and "'many'" in str(e.value) and "'auto'" in str(e.value)
    with pytest.raises(ConfigError, match=r"run.workers.*greater than or equal to 1"):
        load_config(write(tmp_path, "run:\n  workers: 0\n"))


def test_the_gpu_profile_is_a_valid_config_for_the_built_in_target():
    """arbot.gpu.yml: a 60 s budget on CUDA, knobs the target has, and a corpus the built-in evaluator prepares."""
    from bot.knobs import find_knobs
    from evaluator.data import CORPORA

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "arbot.gpu.yml")
    assert cfg.target.budget_seconds == 60 and cfg.target.device == "cuda" and cfg.evaluator.device == "cuda"
    assert cfg.evaluator.corpus in CORPORA and cfg.evaluator.corpus != "kjv"
    knobs = {k.name: k.value for k in find_knobs((root / cfg.target.script).read_text())}
    assert set(cfg.target.overrides) <= set(knobs)
    assert cfg.target.overrides["N_EMBD"] % cfg.target.overrides["N_HEAD"] == 0
    assert load_config(root / "arbot.yml").evaluator.corpus is None  # the CPU default keeps the default corpus
