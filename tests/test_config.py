from pathlib import Path

import pytest

from memnets.config import load_config, to_dict
from memnets.validation import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MQAR = ROOT / "configs/mqar/attention.yaml"


def test_base_inheritance_and_required_overrides():
    cfg = load_config(
        MQAR,
        [
            "train.steps=7",
            "train.batch_size=3",
            "train.lr=0.01",
            "data.seq_len=128",
            "model.max_position_embeddings=128",
            "run.dir=/tmp/x",
            "run.seed=5",
        ],
    )
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr) == (7, 3, 0.01)
    assert (cfg.data.seq_len, cfg.run.dir, cfg.run.seed) == (128, "/tmp/x", 5)
    assert cfg.model.mixer == "attention" and cfg.model.d_model == 64  # from _base.yaml
    assert cfg.run.name == "attention"
    text = load_config(ROOT / "configs/lm/attention-tiny.yaml", ["data.path=corpus.txt"])
    assert text.data.path == "corpus.txt" and text.data.kind == "text"


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.step=5", r"unknown config key 'train\.step' \(did you mean 'steps'\?\)"),
        ("trian.steps=5", r"unknown config key 'trian' \(did you mean 'train'\?\)"),
        ("data.mqar.num_kv_pair=[4]", r"did you mean 'num_kv_pairs'"),
        ("train.steps=ten", r"train\.steps='ten' has the wrong type; expected an integer"),
        ("train.steps=0", r"train\.steps=0 is out of range; must be >= 1"),
        ("train.lr=-1", r"train\.lr=-1\.0 is out of range"),
        ("train.precision=bfloat16", r"train\.precision='bfloat16' is not allowed.*did you mean 'bf16'"),
        ("data.kind=txt", r"data\.kind='txt' is not allowed.*did you mean 'text'"),
        ("model.mixer=atention", r"unknown mixer 'atention' \(did you mean 'attention'\?\)"),
        (
            "model.mixer_options.attention.windw=3",
            r"model\.mixer_options\.attention\.windw.*did you mean 'window'",
        ),
        ("model.mixer_options.attention.window=wide", r"model\.mixer_options\.attention\.window='wide'"),
        ("model.mixer_options.titanz.chunk_size=3", r"mixer_options\.titanz"),
        ("data.mqar.num_kv_pairs=[40]", r"needs data\.seq_len >= 160"),
        ("model.num_heads=3", r"divisible by model\.num_heads=3"),
        ("train.micro_batch_size=5", r"micro_batch_size=5 must .* divide train\.batch_size=64"),
        ("data.path=x.txt", r"data\.path='x\.txt' is only used with data\.kind=text"),
    ],
)
def test_config_errors_name_the_key_and_suggest(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(MQAR, [override])


def test_text_needs_path_and_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"data\.path is required when data\.kind=text"):
        load_config(ROOT / "configs/lm/attention-tiny.yaml")
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(MQAR, ["train.steps"])


def test_inheritance_loop_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance loops"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips():
    cfg = load_config(MQAR, ["train.steps=9"])
    from memnets.config import config_from_dict

    again = config_from_dict(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)
