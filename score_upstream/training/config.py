"""Typed training configuration: dataclass defaults, YAML experiments, ``key=value`` overrides.

Precedence, lowest to highest: the dataclass defaults below, the YAML file, then ``key=value`` items
from the command line (dotted keys reach nested sections: ``optim.lr=1e-4``). Values are parsed with
``yaml.safe_load`` (never ``eval``) and checked against the dataclass field types; an unknown key or a
wrong type raises :class:`ConfigError` naming the key, before any data or model is touched.

``method`` (``score``, ``laser`` or ``spin``) chooses the training method; the keys listed in
:data:`METHOD_KEYS` belong to some methods only, and setting one for another method is an error naming the
key (a default is never an error). :func:`config_to_dict` writes only the chosen method's keys.

Example::

    cfg = load_config("recipes/score/tiny.yaml", ["optim.lr=1e-4", "data.subsets=[dev-clean]"])
    cfg.optim.lr            # 0.0001
    config_to_dict(cfg)     # plain dict, stored in every checkpoint
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration key, value or file that is not what the trainer expects."""


@dataclass
class ModelConfig:
    """Student / target / head settings."""

    init: str = ""  # path of the initial model (fairseq .pt, s3prl .pt, WavLM .pt or transformers dir); "" with tiny
    # model family the recipe is for; a model.init of the other family is an error
    family: Literal["hubert", "wavlm"] = "hubert"
    tiny: bool = False  # build a fresh random model of the family with tiny_model_cfg() / wavlm.tiny_cfg()
    tiny_overrides: dict = field(default_factory=dict)  # keyword overrides for that tiny config
    # parameter-name prefixes of the student that train; the paper's: layers 11-12 (0-based 10, 11),
    # the LayerNorm on the CNN features and the encoder LayerNorm before layer 1
    trainable: list[str] = field(
        default_factory=lambda: ["encoder.layers.10.", "encoder.layers.11.", "layer_norm.", "encoder.layer_norm."]
    )
    head_dim: int = 256  # output size of the shared Linear head (input size comes from the model)
    # 0: the head is one Linear(D -> head_dim) (the authors' HuBERT recipe); N > 0: Linear(D -> N), ReLU,
    # Linear(N -> head_dim) (their WavLM recipe, N = 256)
    head_hidden: int = 0
    target_dropout: bool = True  # the authors' target stays in train mode (dropout on)
    cnn_per_utterance: bool = True  # run the frozen CNN one utterance at a time: exact batch-1 features


@dataclass
class DataConfig:
    """LibriSpeech subsets and batching."""

    subsets: list[str] = field(default_factory=lambda: ["train-clean-100"])
    max_seconds: Optional[float] = None  # drop utterances longer than this (None: whole utterances)
    utterances_per_update: int = 8  # global count over all processes (paper: 1 x accumulation 8)
    batch_seconds: float = 200.0  # max padded audio seconds in one micro-batch (both views counted once)
    bucket_window: int = 0  # updates per length-sorting window; 0 = random composition (paper)
    # SPIN's batching (training.packing, method spin): length-sorted utterances packed up to this many
    # seconds per update (SPIN: 256); null: utterances_per_update whole utterances
    pack_seconds: Optional[float] = None
    min_seconds: float = 0.0  # with pack_seconds: shorter utterances are left out (SPIN: 2.5)
    crop_seconds: Optional[float] = None  # with pack_seconds: longer ones are cropped at random (SPIN: 17)
    num_workers: int = 0  # DataLoader worker processes
    sample_rate: int = 16000
    # stop the run when more than this fraction of the manifest could not be loaded, perturbed or encoded
    # (each such file is reported once and skipped)
    max_failed_fraction: float = 0.01


@dataclass
class PerturbConfig:
    """Perturbed view: speed then pitch, as the reference recipe; the pair order is drawn 50/50."""

    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    semitones: list[float] = field(default_factory=lambda: [-2.0, 2.0])
    pitch_method: Literal["reference", "fast"] = "reference"
    on_device: bool = False  # perturb batched on the training device instead of in data-loader workers
    # SPIN's speaker perturbation (augment.speaker): each ratio r is drawn from U(1, max), then r or 1/r 50/50
    formant_ratio_max: float = 1.4  # formant shift ratio
    f0_ratio_max: float = 2.0  # new median F0 = median F0 x ratio
    f0_range_ratio_max: float = 1.5  # pitch range factor
    pitch_floor: float = 75.0  # Hz, the F0 search range (SPIN reads it per speaker; no speaker table here)
    pitch_ceiling: float = 600.0
    eq_gain_db: float = 12.0  # random 10-band EQ: gains from U(-g, g) dB


@dataclass
class LossConfig:
    gamma: float = 0.1  # soft-DTW smoothing (score, laser)
    normalize: bool = True  # per-pair /(N+M) (score; LASER's divergence is not normalised)
    # LASER's temporal regulariser (contrastive IDM on each sequence's self-distance matrix)
    idm_weight: float = 0.4
    idm_sigma: int = 0  # frames |i - j| <= sigma count as neighbours
    idm_margin: float = 1.1
    # SPIN's swapped prediction
    codebook_size: int = 256
    sinkhorn_eps: float = 0.02
    sinkhorn_iters: int = 3
    temperature: float = 0.1


@dataclass
class OptimConfig:
    name: Literal["s3prl_adamw", "adam"] = "s3prl_adamw"  # adam: torch.optim.Adam (L2 weight decay), as SPIN
    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-7
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    total_steps: int = 3600
    init_lr: float = 0.0  # warm-up starts here (SPIN: 1e-6)
    final_lr: float = 0.0  # linear decay ends here at total_steps (SPIN: 1e-6)
    grad_clip: float = 1.0
    max_nonfinite: int = 10  # abort after this many non-finite updates in a row


@dataclass
class TrainConfig:
    """The whole experiment."""

    method: Literal["score", "laser", "spin"] = "score"  # training.methods: views, head and loss
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # the paper's fp32; bf16 (or auto: bf16 on GPU) on request
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10
    save_every: int = 500  # training-state checkpoint every N updates (and at the end)
    keep_checkpoints: int = 2
    stop_at: int = 0  # end this run after this update (checkpoint kept), e.g. for time-limited jobs; 0: never
    resume: Literal["false", "true", "auto"] = "false"  # true: must find a checkpoint; auto: if present
    save_hf: bool = False  # also write a transformers directory next to score_<family>.pt
    progress: bool = True  # tqdm bar on the leader

    def validate(self, need_model: bool = True) -> None:
        validate(self, need_model)


# Keys that belong to some methods only; every other key is shared by all methods.
_SDTW_VIEWS = ("loss.gamma", "perturb.speeds", "perturb.semitones", "perturb.pitch_method", "perturb.on_device")
_SPEAKER = ("perturb.formant_ratio_max", "perturb.f0_ratio_max", "perturb.f0_range_ratio_max", "perturb.pitch_floor",
            "perturb.pitch_ceiling", "perturb.eq_gain_db")
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "score": (*_SDTW_VIEWS, "loss.normalize", "model.target_dropout"),
    "laser": (*_SDTW_VIEWS, "loss.normalize", "loss.idm_weight", "loss.idm_sigma", "loss.idm_margin"),
    "spin": (*_SPEAKER, "loss.codebook_size", "loss.sinkhorn_eps", "loss.sinkhorn_iters", "loss.temperature",
             "data.pack_seconds", "data.min_seconds", "data.crop_seconds"),
}
_OWNED = {k for keys in METHOD_KEYS.values() for k in keys}
# Defaults that differ by method, used where the YAML and the command line leave the key unset (the
# dataclass defaults above are SCORE's). Trainable sets as the authors' code leaves them:
# LASER (Trikaldarshi/LASER runner_part_freeze.py): parameters 3-176 frozen by position (CNN, feature
# projection, positional conv, layers 1-10), then "model.layer_norm" (the CNN-feature LayerNorm) frozen;
# the encoder LayerNorm (parameters 209-210) is left trainable. SPIN (vectominist/spin config/spin.yaml
# freeze_layers, src/nn/hubert.py trainable_parameters): layers 11-12 only.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "score": {},
    "laser": {"model.trainable": ["encoder.layers.10.", "encoder.layers.11.", "encoder.layer_norm."],
              "loss.normalize": False},
    "spin": {"model.trainable": ["encoder.layers.10.", "encoder.layers.11."]},
}


def check_method_keys(method: str, given: set[str]) -> None:
    """Raise ConfigError naming the first key of ``given`` (dotted) that belongs to other methods only."""
    foreign = sorted(k for k in given if k in _OWNED and k not in METHOD_KEYS[method])
    if foreign:
        users = [m for m, keys in METHOD_KEYS.items() if foreign[0] in keys]
        raise ConfigError(f"config key '{foreign[0]}' belongs to method {' / '.join(users)}, not to method={method!r}; "
                          f"remove it or choose the method it belongs to")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only), or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(key, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, bool) and str(value).lower() in args:  # YAML reads true/false as bools
            return str(value).lower()
        raise ConfigError(f"config key '{key}': expected one of {list(args)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list of {_type_name(args[0])}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"config key '{key}': unsupported field type {tp}")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _apply(obj: Any, data: dict, prefix: str = "", given: set | None = None) -> None:
    """Set the fields of dataclass ``obj`` from ``data`` (recursively), checking names and types; the dotted
    keys set are added to ``given``."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(
                f"unknown config key '{key}'; known keys here: {', '.join(sorted(names))}"
            )
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            _apply(current, v, key + ".", given)
        else:
            setattr(obj, k, _check_value(key, v, hints[k]))
            if given is not None:
                given.add(key)


def parse_override(item: str) -> tuple[str, str]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", "1e-4")``; the value is typed later, against its field."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}': empty key before '='")
    return key, raw


def _yaml_value(key: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"config key '{key}': cannot read value {raw!r} (YAML syntax)") from None


def _set_dotted(cfg: TrainConfig, key: str, raw: str, given: set | None = None) -> None:
    """Set one dotted key from its command-line text (a string field takes the text as it is)."""
    obj: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        sub = ".".join(parts[: i + 1])
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            raise ConfigError(f"unknown config key '{sub}'; known keys here: {', '.join(sorted(names))}")
        if i == len(parts) - 1:
            current = getattr(obj, part)
            if dataclasses.is_dataclass(current):
                _apply(current, _yaml_value(sub, raw), sub + ".", given)
                return
            hint = typing.get_type_hints(type(obj))[part]
            if hint is str or (typing.get_origin(hint) is Literal and raw in typing.get_args(hint)):
                value: Any = raw
            else:
                value = _yaml_value(sub, raw)
            setattr(obj, part, _check_value(sub, value, hint))
            if given is not None:
                given.add(sub)
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"config key '{sub}' is a value, not a section; cannot set '{key}'")


def need(ok: bool, key: str, value: Any, what: str) -> None:
    """A range check of a config value: raise :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {what}, got {value!r}")


def validate(cfg: TrainConfig, need_model: bool = True) -> None:
    """Range checks that types alone cannot express; ``need_model=False`` leaves ``model.init`` unchecked (a
    plan of the data, :mod:`score_upstream.training.plan`, builds no model)."""
    o, d, p = cfg.optim, cfg.data, cfg.perturb
    need(o.lr > 0, "optim.lr", o.lr, "expected a positive learning rate")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "expected two values in [0, 1)")
    need(o.eps > 0, "optim.eps", o.eps, "expected > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "expected >= 0")
    need(o.total_steps > 0, "optim.total_steps", o.total_steps, "expected > 0")
    need(0 <= o.warmup_steps < o.total_steps, "optim.warmup_steps", o.warmup_steps, "expected 0 <= warmup < total_steps")
    need(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "expected >= 0 (0 disables clipping)")
    need(o.max_nonfinite >= 1, "optim.max_nonfinite", o.max_nonfinite, "expected >= 1")
    need(d.utterances_per_update >= 1, "data.utterances_per_update", d.utterances_per_update, "expected >= 1")
    need(d.batch_seconds > 0, "data.batch_seconds", d.batch_seconds, "expected > 0")
    need(d.max_seconds is None or d.max_seconds > 0, "data.max_seconds", d.max_seconds, "expected > 0 or null")
    need(len(d.subsets) > 0, "data.subsets", d.subsets, "expected at least one subset")
    need(d.bucket_window >= 0, "data.bucket_window", d.bucket_window, "expected >= 0")
    need(d.pack_seconds is None or d.pack_seconds > 0, "data.pack_seconds", d.pack_seconds, "expected > 0 or null")
    need(d.min_seconds >= 0 and (d.pack_seconds is not None or d.min_seconds == 0), "data.min_seconds", d.min_seconds,
         "expected >= 0, and 0 unless data.pack_seconds is set")
    need(d.crop_seconds is None or (d.pack_seconds is not None and 0 < d.crop_seconds <= d.pack_seconds),
         "data.crop_seconds", d.crop_seconds, "expected null, or 0 < crop_seconds <= data.pack_seconds (which must be set)")
    need(d.num_workers >= 0, "data.num_workers", d.num_workers, "expected >= 0")
    need(0 <= d.max_failed_fraction <= 1, "data.max_failed_fraction", d.max_failed_fraction, "expected a fraction in [0, 1]")
    need(len(p.speeds) > 0 and all(s > 0 for s in p.speeds), "perturb.speeds", p.speeds, "expected positive factors")
    need(cfg.loss.gamma > 0, "loss.gamma", cfg.loss.gamma, "expected > 0")
    need(0 <= o.init_lr <= o.lr, "optim.init_lr", o.init_lr, "expected 0 <= init_lr <= optim.lr")
    need(0 <= o.final_lr <= o.lr, "optim.final_lr", o.final_lr, "expected 0 <= final_lr <= optim.lr")
    lo = cfg.loss
    need(lo.idm_weight >= 0, "loss.idm_weight", lo.idm_weight, "expected >= 0")
    need(lo.idm_sigma >= 0, "loss.idm_sigma", lo.idm_sigma, "expected >= 0 frames")
    need(lo.idm_margin > 0, "loss.idm_margin", lo.idm_margin, "expected > 0")
    need(lo.codebook_size >= 2, "loss.codebook_size", lo.codebook_size, "expected >= 2 codewords")
    need(lo.sinkhorn_eps > 0, "loss.sinkhorn_eps", lo.sinkhorn_eps, "expected > 0")
    need(lo.sinkhorn_iters >= 1, "loss.sinkhorn_iters", lo.sinkhorn_iters, "expected >= 1")
    need(lo.temperature > 0, "loss.temperature", lo.temperature, "expected > 0")
    for k in ("formant_ratio_max", "f0_ratio_max", "f0_range_ratio_max"):
        need(getattr(p, k) >= 1, f"perturb.{k}", getattr(p, k), "expected >= 1 (r is drawn from U(1, max), then r or 1/r)")
    need(0 < p.pitch_floor < p.pitch_ceiling, "perturb.pitch_floor", p.pitch_floor, "expected 0 < floor < pitch_ceiling")
    need(p.eq_gain_db >= 0, "perturb.eq_gain_db", p.eq_gain_db, "expected >= 0")
    need(cfg.model.head_dim > 0, "model.head_dim", cfg.model.head_dim, "expected > 0")
    need(cfg.model.head_hidden >= 0, "model.head_hidden", cfg.model.head_hidden, "expected 0 (one Linear) or a width > 0")
    need(len(cfg.model.trainable) > 0, "model.trainable", cfg.model.trainable, "expected at least one prefix")
    need(cfg.model.tiny or bool(cfg.model.init) or not need_model, "model.init", cfg.model.init,
         "expected the initial model's path (model.init=PATH) or model.tiny=true")
    need(not (cfg.model.tiny and cfg.model.init), "model.init", cfg.model.init,
         "model.tiny=true (this recipe) builds a random model and would ignore it; add model.tiny=false to start from it")
    need(0 <= cfg.stop_at <= o.total_steps, "stop_at", cfg.stop_at, "expected 0 (off) or a step <= optim.total_steps")
    need(cfg.save_every >= 1, "save_every", cfg.save_every, "expected >= 1")
    need(cfg.log_every >= 1, "log_every", cfg.log_every, "expected >= 1")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), "device", cfg.device,
         "expected auto, cpu, cuda or cuda:N")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                schema: type = TrainConfig, need_model: bool = True) -> Any:
    """Defaults <- YAML file <- ``key=value`` overrides, type-checked and validated.

    Args:
        schema: the config dataclass (``TrainConfig``, or another with a ``validate()`` method, e.g.
            ``score_upstream.pretrain.config.PretrainConfig``).
        need_model: False: a ``TrainConfig`` may leave ``model.init`` empty (``score-train --plan``).

    Raises:
        ConfigError: missing/unreadable YAML, unknown key, wrong type or out-of-range value.
    """
    cfg = schema()
    given: set[str] = set()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found; pass a YAML file such as recipes/score/tiny.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        _apply(cfg, data, given=given)
    for item in overrides:
        _set_dotted(cfg, *parse_override(item), given=given)
    if hasattr(cfg, "method"):
        check_method_keys(cfg.method, given)
        for key, value in METHOD_DEFAULTS[cfg.method].items():
            if key not in given:
                section, name = key.split(".")
                setattr(getattr(cfg, section), name, list(value) if isinstance(value, list) else value)
    cfg.validate() if need_model else cfg.validate(need_model=False)
    return cfg


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = (), prefix: str = "") -> dict[str, tuple]:
    """Dotted keys whose values differ between two :func:`config_to_dict` results: ``{key: (old, new)}``.

    ``ignore`` lists dotted keys (or sections) that may differ, e.g. how long a run goes on.
    """
    out: dict[str, tuple] = {}
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if key in ignore:
            continue
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, ignore, key + "."))
        elif a != b:
            out[key] = (a, b)
    return out


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict (only str/int/float/bool/None/list/dict): safe for ``torch.load(weights_only=True)``.

    Keys of other methods than ``cfg.method`` are left out (:data:`METHOD_KEYS`).
    """
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, TrainConfig):
        for key in _OWNED - set(METHOD_KEYS[cfg.method]):
            section, name = key.split(".")
            out[section].pop(name, None)
    return out


def config_from_dict(data: dict) -> TrainConfig:
    """Inverse of :func:`config_to_dict`, with the same checks as a YAML file. A dict without ``method``
    (written before methods existed) is a SCORE config; keys it lacks take their defaults."""
    cfg = TrainConfig()
    given: set[str] = set()
    _apply(cfg, data, given=given)
    check_method_keys(cfg.method, given)
    cfg.validate()
    return cfg
