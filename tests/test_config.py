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


def _write(folder, name, text):
    (folder / name).write_text(text)
    return folder / name


def test_an_empty_section_never_replaces_the_inherited_one(tmp_path):
    # issue 25 case 3: `train:` with every key commented out used to replace the base's section with
    # the built-in defaults (steps 1000, lr 1e-3) without a word
    _write(tmp_path, "_base.yaml", "train:\n  steps: 1500\n  lr: 3.0e-3\n")
    child = _write(
        tmp_path, "child.yaml", "base: _base.yaml\nmodel: {mixer: attention}\ntrain:\n  # steps: 5\n"
    )
    with pytest.raises(ConfigError, match=r"child\.yaml: section 'train' is empty"):
        load_config(child)
    nested = _write(tmp_path, "nested.yaml", "data:\n  mqar:\n")
    with pytest.raises(ConfigError, match=r"section 'data\.mqar' is empty"):
        load_config(nested)
    from memnets.config import config_from_dict

    with pytest.raises(ConfigError, match=r"section 'train' is empty"):
        config_from_dict({"train": None})


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", r"bad\.yaml: the config file is empty"),
        ("# only a comment\n", r"bad\.yaml: the config file is empty"),
        (
            "train:\n  steps: 5\n  steps: 7\n",
            r"bad\.yaml: duplicate key 'steps' at line 3 \(first at line 2\)",
        ),
        ("train: {lr: 0.1\n", r"bad\.yaml: not valid YAML"),
        ("train:\n  steps: 5\n bad indent: 1\n", r"bad\.yaml: not valid YAML"),
    ],
)
def test_yaml_files_that_would_silently_change_the_run(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_write(tmp_path, "bad.yaml", text))


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.grad_clip=.nan", r"train\.grad_clip=nan is not allowed; expected a finite number"),
        ("train.lr=.inf", r"train\.lr=inf is not allowed; expected a finite number"),
        ("data.mqar.power_a=.nan", r"data\.mqar\.power_a=nan"),
        ("train.betas=[1.5,0.9]", r"train\.betas\[0\]=1\.5 must be in \[0, 1\)"),
        ("train.betas=[0.9,.nan]", r"train\.betas\[1\]=nan is not allowed"),
        (
            "run.dir='{nam}'",
            r"run\.dir='\{nam\}' is not a valid pattern .*only placeholder allowed is \{name\}",
        ),
        ("run.dir='runs/{'", r"run\.dir='runs/\{' is not a valid pattern"),
        ("model.max_position_embeddings=32", r"model\.max_position_embeddings=32 is below data\.seq_len=64"),
        ("model.norm_eps=-1e-6", r"model\.norm_eps=-1e-06 must be > 0"),
    ],
)
def test_values_that_used_to_pass_or_fail_late(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(MQAR, [override])


TITANS = ROOT / "configs/mqar/titans.yaml"


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("chunk_size=0", r"model\.mixer_options\.titans\.chunk_size=0 is not allowed: .*must be >= 1"),
        (
            "dot_precision=fp8",
            r"model\.mixer_options\.titans\.dot_precision='fp8' is not allowed: .*not one of",
        ),
        ("lr_max=-1", r"model\.mixer_options\.titans\.lr_max=-1 is not allowed"),
    ],
)
def test_mixer_constructor_errors_are_config_errors_with_the_dotted_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(TITANS, [f"model.mixer_options.titans.{override}"])


def test_non_positive_epsilons_of_any_mixer_are_config_errors():
    # gated_deltanet's constructor takes norm_eps=-1 and the output is NaN at the first forward
    with pytest.raises(ConfigError, match=r"model\.mixer_options\.gated_deltanet\.norm_eps=-1 must be > 0"):
        load_config(
            ROOT / "configs/mqar/gated_deltanet.yaml", ["model.mixer_options.gated_deltanet.norm_eps=-1"]
        )


def test_mixer_error_mapping_is_generic():
    """The option is found from the message, also for nested option groups and for defaults."""
    from memnets.config import mixer_config_error
    from memnets.model import ModelConfig

    model = ModelConfig(mixer="titans", mixer_options={"titans": {"memory": {"depth": 0}}})
    err = mixer_config_error(model, "titans", ValueError("titans: depth must be >= 1, got 0"))
    assert str(err).startswith("model.mixer_options.titans.memory.depth=0 is not allowed")
    err = mixer_config_error(model, "titans", ValueError("titans: chunk_size must divide 7"))
    assert str(err).startswith("model.mixer_options.titans.chunk_size (its default) is not allowed")
    err = mixer_config_error(model, "titans", ValueError("titans: head dim too large"))
    assert str(err).startswith("model.mixer_options.titans (mixer 'titans', model.d_model=128")


def test_device_that_this_machine_lacks_is_a_config_error(monkeypatch):
    import torch

    from memnets.environment import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"train\.device='cuda' but this machine has no usable CUDA device"):
        check_device("cuda")
    with pytest.raises(ConfigError, match=r"train\.device='gpu0' is not a device name"):
        check_device("gpu0")
    assert check_device("cpu").type == "cpu"
