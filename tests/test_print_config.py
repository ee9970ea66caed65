"""``train.py --print-config``: the resolved config as YAML, nothing run and nothing written."""

from __future__ import annotations

import yaml
from helpers import ROOT, run_train

from memnets.config import config_from_dict


def test_print_config_resolves_base_and_overrides_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    out = run_train(
        [
            str(ROOT / "configs/mqar/attention.yaml"),
            "model.d_model=48",
            "train.steps=7",
            f"run.dir={run_dir}",
            "--print-config",
        ]
    )
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["model"]["mixer"] == "attention"  # from the config itself
    assert data["data"]["mqar"]["vocab_size"] == 256  # inherited from _base.yaml
    assert data["train"]["lr"] == 3.0e-3  # inherited, not overridden
    assert data["model"]["d_model"] == 48 and data["train"]["steps"] == 7  # overrides
    assert data["run"]["name"] == "attention"
    assert config_from_dict(data).train.steps == 7  # the output loads back as a config
    assert not run_dir.exists()


def test_print_config_reports_a_config_error():
    out = run_train([str(ROOT / "configs/mqar/attention.yaml"), "train.stpes=7", "--print-config"])
    assert out.returncode == 2
    assert "stpes" in out.stderr and out.stdout == ""
