"""The registry of pretraining methods: one file per method, the file name is the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..registry import Registry, documented_parameters, value_fits
from .base import MethodConfig, PretrainMethod

METHODS: Registry[type[PretrainMethod]] = Registry("method")
register_method = METHODS.register
get_method = METHODS.__getitem__


def method_config(method_cls: type[PretrainMethod], params: Mapping[str, Any]) -> MethodConfig:
    """The method's ``Config`` with ``params`` overriding its defaults, every name and type
    checked (before a run folder exists).

    Nested groups take dotted names (``augment.min_scale=0.2``, ``augment_second.blur_prob=0``)
    (or a mapping, as a grid file's TOML gives them) and ``augment=NAME`` applies a preset of
    ``embedkit.augment.AUGMENT_PRESETS`` to both views' settings; dotted values apply after
    the preset. A tuple takes comma-separated numbers
    (``augment.blur_sigma=0.1,1.0``).
    """
    defaults = method_cls.Config()
    fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(method_cls.Config)}
    groups = [n for n, v in fields.items() if n.startswith("augment")]
    flat: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    preset = None
    for key, value in params.items():
        group, dot, name = key.partition(".")
        if dot and group in groups:
            nested.setdefault(group, {})[name] = value
        elif key == "augment" and isinstance(value, str):
            preset = _preset(value)
        elif key in groups and isinstance(value, Mapping):  # a TOML table: augment.min_scale
            nested.setdefault(key, {}).update(value)
        elif key not in fields or key in groups:
            hint = f"{key}.NAME=VALUE or augment=PRESET" if key in groups else "embedkit methods"
            raise ConfigError(
                f"{method_cls.name} has no parameter {key}: valid ones are "
                f"{', '.join(sorted(n for n in fields if n not in groups))}, "
                f"{', '.join(f'{g}.*' for g in groups)} (see {hint})"
            )
        else:
            flat[key] = _coerce(value, fields[key], f"{method_cls.name}.{key}")
    for group in groups:
        base = fields[group]
        if base is None and group in nested:
            base = fields["augment"]  # the second view starts from the first's settings
        if base is None:
            continue
        changes = dict(preset or {})
        for name, value in nested.get(group, {}).items():
            if not hasattr(base, name):
                raise ConfigError(
                    f"{method_cls.name}: {group} has no setting {name}: its settings are "
                    f"{', '.join(f.name for f in dataclasses.fields(base))}"
                )
            changes[name] = _coerce(value, getattr(base, name), f"{group}.{name}")
        if changes or group in nested:
            flat[group] = dataclasses.replace(base, **changes)
    return method_cls.Config(**flat)


def _preset(name: str) -> dict[str, float]:
    from ..augment import AUGMENT_PRESETS

    if name not in AUGMENT_PRESETS:
        raise ConfigError(
            f"unknown augmentation preset '{name}': use {', '.join(AUGMENT_PRESETS)} "
            f"(or set single values: augment.min_scale=0.2)"
        )
    return AUGMENT_PRESETS[name]


def _coerce(value: Any, default: Any, where: str) -> Any:
    """``value`` as the type of ``default`` (an int where a float is expected is fine; a
    tuple is given as comma-separated numbers); anything else is a one-line error."""
    if isinstance(default, tuple):
        if isinstance(value, str):
            parts = value.split(",")
        else:  # JSON makes lists of tuples; a lone number is one element
            parts = value if isinstance(value, (list, tuple)) else [value]
        try:
            value = tuple(float(v) for v in parts)
        except (TypeError, ValueError):
            value = None
        if value is None or len(value) != len(default):
            raise ConfigError(
                f"--param {where}: expected {len(default)} comma-separated numbers, "
                f"like {','.join(map(str, default))}"
            ) from None
        if min(value) < 0:
            raise ConfigError(f"--param {where}: numbers of 0 or more, like {default}")
        return value
    if not value_fits(value, default):
        raise ConfigError(
            f"--param {where}={value}: expected {type(default).__name__} (default {default})"
        )
    # every numeric setting is a count, size, probability, strength, temperature, weight or
    # momentum: a negative one would fail deep inside a step instead of here
    if isinstance(default, (int, float)) and not isinstance(default, bool) and value < 0:
        raise ConfigError(f"--param {where}={value}: must be 0 or more (default {default})")
    return float(value) if isinstance(default, float) else value


def method_parameters(name: str) -> list[dict[str, str]]:
    """The ``--param`` names of a method: name, type, default and description."""
    method_cls = get_method(name)
    described = documented_parameters(method_cls.Config, "Attributes")
    rows = []
    for field in dataclasses.fields(method_cls.Config):
        if field.default is not dataclasses.MISSING:
            default = field.default
        else:
            default = field.default_factory()  # type: ignore[misc]
        rows.append(
            {
                "method": name,
                "parameter": field.name,
                "type": str(field.type),
                "default": (
                    f"{type(default).__name__}(...)"
                    if dataclasses.is_dataclass(default)
                    else str(default)
                ),
                "description": described.get(field.name, "")
                + (
                    f" (settings: {field.name}.NAME=VALUE, e.g. {field.name}.min_scale=0.2;"
                    f" presets: augment=natural, grayscale-medical or color-medical)"
                    if field.name.startswith("augment")
                    else ""
                ),
            }
        )
    return rows


from . import (  # noqa: E402,F401  (each registers itself)
    barlowtwins,
    byol,
    dcl,
    dino,
    mae,
    mocov1,
    mocov2,
    mocov3,
    msn,
    nnclr,
    simclr,
    simsiam,
    supervised,
    swav,
    tico,
    vicreg,
)

__all__ = [
    "METHODS",
    "MethodConfig",
    "PretrainMethod",
    "get_method",
    "method_config",
    "method_parameters",
    "register_method",
]
