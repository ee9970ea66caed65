"""Run configuration: typed dataclasses, YAML files with ``base:`` inheritance, dotted command-line
overrides, strict validation.

    cfg = load_config("configs/mqar/attention.yaml", ["train.steps=100", "model.d_model=64"])

Unknown or misspelled keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
dotted key and suggesting the nearest valid one. ``to_dict(cfg)`` gives the resolved config that each
run writes to ``config.yaml``."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .model import ModelConfig
from .registry import build_mixer, mixer_options
from .run_dir import atomic_write_text
from .validation import ConfigError, coerce, unknown_key


def _range(lo: float | None = None, hi: float | None = None, **kw: Any) -> Any:
    return field(metadata={"min": lo, "max": hi}, **kw)


@dataclass
class MQARConfig:
    """Multi-query associative recall (zoology-style). Keys come from ``[1, vocab/2)``, values from
    ``[vocab/2, vocab)``; each example lists ``num_kv_pairs`` pairs then queries each key once at a
    power-law distributed gap. A list of ``num_kv_pairs`` trains on a mixture and reports accuracy
    per number of pairs."""

    vocab_size: int = _range(8, default=8192)
    num_kv_pairs: list[int] = field(default_factory=lambda: [4])
    power_a: float = _range(0.0, 1.0, default=0.01)
    random_non_queries: bool = True
    num_test: int = _range(1, default=1_000)


@dataclass
class TextConfig:
    """Text (``memnets.data.text``): a folder of token shards from ``scripts/prepare_data.py``, a
    ``.txt``/``.jsonl``/``.json``/``.parquet`` file, or a pre-tokenized ``.bin``. ``tokenizer: byte``
    needs no download; otherwise a ``tokenizer.json`` path, ``tiktoken:ENCODING`` or a Hub model id.
    ``dtype`` is for a ``.bin`` no ``meta.json`` describes (``auto``: what ``meta.json`` states, else
    ``uint16``). ``val_fraction`` (> 0) is the validation tail of a single file. ``encoding_errors:
    replace`` reads non-UTF-8 bytes as U+FFFD instead of stopping with an error."""

    tokenizer: str = "byte"
    text_field: str = "text"
    val_fraction: float = _range(0.0, 0.5, default=0.05)
    dtype: Literal["auto", "uint16", "uint32"] = "auto"
    encoding_errors: Literal["strict", "replace"] = "strict"


@dataclass
class DataConfig:
    kind: Literal["mqar", "text"] = "mqar"
    seq_len: int = _range(2, default=64)
    path: str | None = None
    mqar: MQARConfig = field(default_factory=MQARConfig)
    text: TextConfig = field(default_factory=TextConfig)
    num_workers: int = _range(0, default=0)


@dataclass
class TrainConfig:
    """``batch_size`` is the global batch in sequences per optimizer step; ``micro_batch_size`` (per
    process) splits it into gradient-accumulation steps. ``checkpoint_checksum`` writes a SHA-256 beside
    each checkpoint (``step_N.pt.sha256``), checked on every load; a mismatch skips the file like a
    truncated one."""

    steps: int = _range(1, default=1000)
    batch_size: int = _range(1, default=32)
    micro_batch_size: int | None = None
    lr: float = _range(0.0, default=1e-3)
    min_lr_ratio: float = _range(0.0, 1.0, default=0.1)
    warmup_steps: int = _range(0, default=100)
    weight_decay: float = _range(0.0, default=0.1)
    # parameters (fnmatch globs on their names) kept out of weight decay besides the vectors (gains and
    # biases), e.g. the deep memories' per-head LayerNorms "*.memory.norm_*" (memnets.optim.build_optimizer)
    no_decay: list[str] | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = _range(0.0, default=1.0)
    # PaLM's z-loss (arXiv 2204.02311 §5; ParaRNN arXiv 2510.21450 App. C.1 Table 4 trains with 1e-4): adds
    # z_loss · mean over the predicted tokens of logsumexp(logits)², keeping the softmax normaliser near 1;
    # 0 = off. Logged inside aux_loss.
    z_loss: float = _range(0.0, default=0.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    # re-run each block in the backward instead of keeping its activations (LM.checkpoint_blocks): less
    # memory for about one more forward pass per step
    activation_checkpointing: bool = False
    # re-run each memory chunk step in the backward, keeping only its chunk-start state
    # (memnets.compiled.recomputed_steps): the deep memories' saved tensors fall 1.1-2.3x at the 760M
    # widths (Atlas most) for one more forward of the memories per step; the chunked and compiled
    # paths (the kernels checkpoint on their own)
    memory_recompute: bool = False
    tf32: bool = True  # on CUDA, float32 matmuls may use TF32 tensor cores
    # on CPU (Linux, glibc): "reuse" keeps freed blocks up to 1 GiB in malloc's heap instead of
    # page-faulting fresh memory for every large tensor (memnets.environment.reuse_cpu_memory)
    cpu_allocator: Literal["reuse", "default"] = "reuse"
    device: str = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"
    max_bad_steps: int = _range(1, default=10)
    eval_every: int = _range(1, default=200)
    eval_batches: int = _range(1, default=8)
    early_stop_accuracy: float | None = None
    log_every: int = _range(1, default=10)
    checkpoint_every: int = _range(1, default=500)
    keep_checkpoints: int = _range(1, default=2)
    checkpoint_checksum: bool = False  # a SHA-256 beside each checkpoint, verified whenever it is loaded
    init_from: str | None = None
    trainable: list[str] | None = None


@dataclass
class RunConfig:
    """``dir`` may use ``{name}``: the config file's stem unless ``name`` is set. ``resume=never`` refuses
    to start in a folder that already has checkpoints; ``auto`` continues from the latest one."""

    name: str | None = None
    dir: str = "runs/{name}"
    seed: int = 0
    resume: Literal["auto", "never"] = "never"
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "memnets"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------------------
# dict <-> dataclass


def _from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key(path, key, fields)
        sub = f"{path}.{key}" if path else key
        ann = hints[key]
        if dataclasses.is_dataclass(ann):
            if value is None:  # e.g. `train:` with every key commented out
                raise ConfigError(
                    f"section '{sub}' is empty; give it at least one key or remove the line "
                    "(an empty section would replace the inherited one with the defaults)"
                )
            kwargs[key] = _from_dict(ann, value, sub)
            continue
        value = coerce(sub, value, ann)
        meta = fields[key].metadata
        lo, hi = meta.get("min"), meta.get("max")
        if value is not None and lo is not None and value < lo:
            raise ConfigError(f"{sub}={value} is out of range; must be >= {lo}")
        if value is not None and hi is not None and value > hi:
            raise ConfigError(f"{sub}={value} is out of range; must be <= {hi}")
        kwargs[key] = value
    return cls(**kwargs)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    cfg = _from_dict(ModelConfig, data, "model")
    cfg.validate()
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = _from_dict(Config, data, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def validate(cfg: Config) -> None:
    """Checks that span fields (the per-field ranges are checked on load), including building each
    mixer on the meta device."""
    cfg.model.validate()
    check_mixers(cfg.model)
    t, d, m = cfg.train, cfg.data, cfg.model
    if not m.norm_eps > 0:
        raise ConfigError(f"model.norm_eps={m.norm_eps} must be > 0")
    if m.init_std < 0:
        raise ConfigError(f"model.init_std={m.init_std} must be >= 0")
    if m.max_position_embeddings and m.max_position_embeddings < d.seq_len:
        raise ConfigError(
            f"model.max_position_embeddings={m.max_position_embeddings} is below data.seq_len={d.seq_len}; "
            "must be >= data.seq_len (or 0 for no learned positions)"
        )
    for i, beta in enumerate(t.betas):
        if not 0 <= beta < 1:
            raise ConfigError(f"train.betas[{i}]={beta} must be in [0, 1) (AdamW's moment decay rates)")
    try:
        cfg.run.dir.format(name="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"run.dir={cfg.run.dir!r} is not a valid pattern ({type(e).__name__}: {e}); the only "
            "placeholder allowed is {name}"
        ) from None
    if t.micro_batch_size is not None and (t.micro_batch_size < 1 or t.batch_size % t.micro_batch_size):
        raise ConfigError(
            f"train.micro_batch_size={t.micro_batch_size} must be >= 1 and divide train.batch_size={t.batch_size}"
        )
    if t.early_stop_accuracy is not None and not 0 < t.early_stop_accuracy <= 1:
        raise ConfigError(f"train.early_stop_accuracy={t.early_stop_accuracy} must be in (0, 1]")
    if d.kind == "text" and not d.path:
        raise ConfigError(
            "data.path is required when data.kind=text (a .txt/.jsonl/.parquet/.bin file or a prepare_data.py folder)"
        )
    if d.kind == "text" and d.text.val_fraction == 0:
        raise ConfigError(
            "data.text.val_fraction=0 leaves no validation split, so evaluation would report nothing real; "
            "must be in (0, 0.5] (a prepare_data.py folder ignores it: it holds val.bin)"
        )
    if d.kind == "mqar":
        if d.path is not None:
            raise ConfigError(f"data.path={d.path!r} is only used with data.kind=text (data.kind=mqar)")
        m = d.mqar
        if not m.num_kv_pairs or min(m.num_kv_pairs) < 1:
            raise ConfigError(f"data.mqar.num_kv_pairs={m.num_kv_pairs} must list numbers >= 1")
        if d.seq_len % 2:
            raise ConfigError(f"data.seq_len={d.seq_len} must be even for MQAR (key/value pairs)")
        if 4 * max(m.num_kv_pairs) > d.seq_len:
            raise ConfigError(
                f"data.mqar.num_kv_pairs={m.num_kv_pairs} needs data.seq_len >= {4 * max(m.num_kv_pairs)} "
                f"(pairs plus one query per key), got {d.seq_len}"
            )
        if m.vocab_size <= d.seq_len:
            raise ConfigError(
                f"data.mqar.vocab_size={m.vocab_size} must exceed data.seq_len={d.seq_len} (distinct keys)"
            )


def _leaves(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def mixer_config_error(model: ModelConfig, mixer: str, error: ValueError) -> ConfigError:
    """A mixer constructor's ``ValueError`` as a config error naming the dotted option key: the
    option whose name the message mentions (the ones the config sets first, then the constructor's
    defaults), else the mixer's options section."""
    text = str(error)
    given = _leaves(model.mixer_options.get(mixer, {}))
    candidates = {
        **{k: ("default", None) for k in mixer_options(mixer)},
        **{k: ("set", v) for k, v in given.items()},
    }
    hits = []
    for key, (origin, value) in candidates.items():
        m = re.search(rf"(?<![\w.]){re.escape(key.rsplit('.', 1)[-1])}(?!\w)", text)
        if m:
            hits.append((origin != "set", m.start(), key, origin, value))
    section = f"model.mixer_options.{mixer}"
    if not hits:
        return ConfigError(
            f"{section} (mixer '{mixer}', model.d_model={model.d_model}, model.num_heads={model.num_heads}): {text}"
        )
    _, _, key, origin, value = min(hits)
    shown = f"={value!r}" if origin == "set" else " (its default)"
    return ConfigError(f"{section}.{key}{shown} is not allowed: {text}")


def check_mixers(model: ModelConfig) -> None:
    """Build each mixer of ``model`` on the meta device (no memory, no compute), so a value only its
    constructor rejects is reported as a config error before a run starts."""
    for name in dict.fromkeys(model.layer_mixers()):
        for key, value in _leaves(model.mixer_options.get(name, {})).items():
            # an epsilon guards a division or a square root: zero or below gives inf/NaN at the first
            # forward, and not every constructor checks it
            if re.search(r"(^|[._])(\w+_)?eps$", key) and isinstance(value, (int, float)) and not value > 0:
                raise ConfigError(f"model.mixer_options.{name}.{key}={value!r} must be > 0 (an epsilon)")
        try:
            with torch.device("meta"):
                build_mixer(name, model.d_model, model.num_heads, **model.mixer_options.get(name, {}))
        except ConfigError:
            raise
        except ValueError as e:
            raise mixer_config_error(model, name, e) from None


# ----------------------------------------------------------------------------------------------------
# YAML loading


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the
    last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                    f"{seen[key]}); each key may appear once per section"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config with its `base:` chain merged in (not yet validated)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loops: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        kind = "is a directory, not a config file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {kind}: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty (it would train on the built-in defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at the top level")
    _check_sections(data, Config, "", path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else base
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, load_yaml(path.parent / b, (*seen, path)))
    return _merge(merged, data)


def _check_sections(data: dict[str, Any], cls: type, prefix: str, path: Path) -> None:
    """Name the file of an empty section (a merge would otherwise drop the inherited one first)."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        ann = hints.get(key)
        if ann is None or not dataclasses.is_dataclass(ann):
            continue
        sub = f"{prefix}{key}"
        if value is None:
            raise ConfigError(
                f"{path}: section '{sub}' is empty; give it at least one key or remove the line "
                "(an empty section would replace the inherited one with the defaults)"
            )
        if isinstance(value, dict):
            _check_sections(value, ann, f"{sub}.", path)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{'.'.join(keys[: i + 1])}' is not a section")
            node[k] = dict(nxt)
            node = node[k]
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data = load_yaml(Path(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    if cfg.run.name is None and path is not None:
        cfg.run.name = Path(path).stem
    return cfg


# the memory families of ``configs/mqar`` that the length studies sweep (scripts/grad_norm_vs_length.py,
# scripts/memory_sensitivity.py), Gated DeltaNet and MoM as the reference recurrences
MQAR_MEMORY_FAMILIES = (
    "titans",
    "titans-mac",
    "titans-mag",
    "titans-mal",
    "moneta",
    "yaad",
    "memora",
    "omeganet",
    "atlas",
    "tnt",
    "gated_deltanet",
    "mom",
)


def memory_overrides(path: str | Path, options: list[str]) -> list[str]:
    """``KEY=VALUE`` memory options (``norm_scale=0.1``) as overrides of the config's own mixer,
    ``model.mixer_options.<mixer>.memory.KEY=VALUE``: one option for a sweep over families."""
    if not options:  # nothing to name: the config need not load on its own (a text config's data.path)
        return []
    mixer = load_config(path).model.mixer
    return [f"model.mixer_options.{mixer}.memory.{o}" for o in options]


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (through a temporary file: a crash never leaves half a config)."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
