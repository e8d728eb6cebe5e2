"""Grid files: the benchmark's axes and evaluation plan, read from TOML and checked.

A grid file declares the pretraining axes (methods, datasets and multi-domain specs,
backbones, initialisations, sizes, and any other pretraining option or method parameter
given as a list), the baseline encoders (initialisations without pretraining) and the
evaluation plan (label fractions, seeds, kNN, OOD scorers, transfer). ``expand`` turns it
into cells, each identified by a hash of its full configuration (see ``cells``).

Example (``embedkit grid preset demo`` prints a complete one)::

    name = "my-study"

    [pretrain]
    methods = ["simclr", "mocov3"]
    datasets = ["organamnist", "organamnist+organcmnist"]
    backbones = ["resnet50"]
    inits = ["random", "imagenet"]
    sizes = [64]
    epochs = 400
    exclude = [{ method = "mocov3", multi_domain = true }]

    [pretrain.params.simclr]
    temperature = [0.1, 0.2]      # a list is an axis

    [evaluate]
    label_fractions = [0.01, 0.1, 1.0]
    seeds = [0, 1, 2, 3, 4]
    scorers = ["knn", "mahalanobis"]
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backbones import BACKBONES
from ..configs import RECIPES, PretrainConfig, ProbeConfig
from ..data import DATASETS, GROUPS, SIZES, components
from ..data.custom import USER_NAME
from ..data.registry import registered
from ..errors import ConfigError, EmbedkitError, UnknownNameError
from ..methods import METHODS, get_method, method_config
from ..utils import read_text, stable_hash

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "presets"

AXES = {  # grid-file key -> the cell's axis name
    "methods": "method",
    "datasets": "dataset",
    "backbones": "backbone",
    "inits": "init",
    "sizes": "size",
}
# pretraining options a grid may fix or vary (a list is an axis): PretrainConfig's fields but
# the axes and what belongs to the executor or the machine, not to a cell's identity
NOT_PRETRAIN_OPTIONS = {*AXES.values(), "device", "devices", "num_nodes", "data_root"}
NOT_PRETRAIN_OPTIONS |= {"download", "loggers", "method_params"}


def _field_types(config_cls, leave_out=()) -> dict[str, type]:
    """Field name -> the type a grid file gives it (a TOML array for a tuple)."""
    kinds = {}
    for f in dataclasses.fields(config_cls):
        if f.name in leave_out:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = RECIPES["paper"].get(f.name, default)  # a recipe's option: its type
        kinds[f.name] = list if isinstance(default, tuple) else type(default)
    return kinds


PRETRAIN_OPTIONS = _field_types(PretrainConfig, NOT_PRETRAIN_OPTIONS)
TOP_KEYS = ("name", "description", "pretrain", "baselines", "inits", "evaluate")
OOD_ID = ("in-domain", "all")


@dataclass(frozen=True)
class EvaluationPlan:
    """What every encoder of a grid is evaluated on (stored in each cell's identity).

    Attributes:
        datasets: embedded and evaluated for every encoder (default: every dataset the
            pretraining specs are made of).
        label_fractions, seeds, protocol, l2_grid: the linear probe
            (``embedkit.eval.ProbeConfig``; the L2 strength is chosen on val from the grid).
        knn: weighted kNN classification; ``knn_k`` neighbours.
        scorers: OOD scorers; ``params`` their keyword arguments (``{"knn": {"k": 50}}``).
        ood_id: ``in-domain`` (ID = the datasets an encoder was pretrained on; every dataset
            for baselines) or ``all`` (every dataset is ID once).
        ood_splits: ``test`` or ``all`` splits of the OOD datasets.
        transfer: probe every encoder on every dataset (else only on its own).
        batch_size, dtype: extraction settings.
        ood_datasets: external sets scored only as OOD, against every ID dataset (never
            probed: a test-only dataset of the user's, ``embedkit.data.custom``).
    """

    datasets: tuple[str, ...] = ()
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    protocol: str = "newton"
    l2_grid: tuple[float, ...] = ProbeConfig.l2_grid
    knn: bool = True
    knn_k: int = 20
    scorers: tuple[str, ...] = ("knn", "mahalanobis")
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    ood_id: str = "in-domain"
    ood_splits: str = "test"
    transfer: bool = True
    batch_size: int = 256
    dtype: str = "float32"
    ood_datasets: tuple[str, ...] = ()


EVALUATE_OPTIONS = _field_types(EvaluationPlan)


@dataclass(frozen=True)
class GridSpec:
    """A checked grid file.

    Attributes:
        name: the grid's name; an output folder belongs to one grid.
        pretrain: axis name -> values (``method``, ``dataset``, ``backbone``, ``init``,
            ``size`` and any varied option), plus fixed options.
        params: method -> parameter -> list of values (one value: fixed).
        exclude: partial axis assignments whose cells are dropped.
        baselines: initialisations embedded without pretraining, per backbone and size.
        inits: alias -> backbone -> init (``imagenet_ssl = {vit_small = "timm:dino"}``).
        evaluate: the evaluation plan.
        text: the grid file's text, saved in the output folder.
        origin: where it was read from (a path, or ``preset:NAME``).
    """

    name: str
    pretrain: dict[str, list[Any]]
    params: dict[str, dict[str, list[Any]]]
    exclude: tuple[dict[str, Any], ...]
    baselines: tuple[str, ...]
    inits: dict[str, dict[str, str]]
    evaluate: EvaluationPlan
    text: str
    origin: str
    description: str = ""
    base: str = ""  # folder that relative weights paths are resolved against


def _error(origin: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"grid {origin}: {key}: {message}")


def _unknown_keys(origin: str, table: dict, valid, where: str) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise _error(
                origin,
                f"{where}{key}",
                f"unknown key: {hint}valid keys are {', '.join(sorted(valid))}",
            )


def _as_list(origin: str, key: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _error(origin, key, "an empty axis: give at least one value")
    return values


def _check_type(origin: str, key: str, values: list[Any], kind: type) -> None:
    for value in values:
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise _error(origin, key, f"{value!r} is not of type {kind.__name__}")


def _check_choice(origin: str, key: str, values: list[Any], choices, kind: str) -> None:
    for value in values:
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise _error(
                origin,
                key,
                f"unknown {kind} '{value}': {hint}valid {kind}s: {', '.join(map(str, choices))}",
            )


def _check_datasets(origin: str, key: str, values: list[str]) -> None:
    """Registered names are checked here; other names may be the user's datasets, found in
    the data root when the grid runs (absent ones are skipped then), unless they look like
    a misspelt registered name."""
    for value in values:
        for part in value.split("+"):
            if registered(part) is not None or part in GROUPS:
                continue
            close = difflib.get_close_matches(part, list(DATASETS), n=1, cutoff=0.85)
            if close or not USER_NAME.match(part):
                error = UnknownNameError("dataset", part, list(DATASETS) + list(GROUPS))
                raise _error(origin, key, f"'{value}': {error}")


def parse_grid(text: str, origin: str = "<text>", base: str | Path = ".") -> GridSpec:
    """Read and check a grid file's text; every unknown key or value is a ConfigError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"grid {origin} is not valid TOML: {exc}") from None
    _unknown_keys(origin, data, TOP_KEYS, "")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _error(origin, "name", 'give the grid a name (name = "my-study")')

    pretrain_table = dict(data.get("pretrain", {}))
    raw_params = pretrain_table.pop("params", {})
    raw_exclude = pretrain_table.pop("exclude", [])
    _unknown_keys(origin, pretrain_table, {*AXES, *PRETRAIN_OPTIONS}, "pretrain.")
    for key in AXES:
        if key not in pretrain_table:
            raise _error(origin, f"pretrain.{key}", "missing: every grid names this axis")
    pretrain: dict[str, list[Any]] = {}
    for key, value in pretrain_table.items():
        values = _as_list(origin, f"pretrain.{key}", value)
        axis = AXES.get(key, key)
        kind = {"methods": str, "datasets": str, "backbones": str, "inits": str, "sizes": int}
        _check_type(origin, f"pretrain.{key}", values, kind.get(key) or PRETRAIN_OPTIONS[key])
        pretrain[axis] = values
    _check_choice(origin, "pretrain.methods", pretrain["method"], list(METHODS), "method")
    _check_choice(origin, "pretrain.backbones", pretrain["backbone"], list(BACKBONES), "backbone")
    _check_choice(origin, "pretrain.sizes", pretrain["size"], SIZES, "size")
    _check_datasets(origin, "pretrain.datasets", pretrain["dataset"])

    params: dict[str, dict[str, list[Any]]] = {}
    _unknown_keys(origin, raw_params, list(METHODS), "pretrain.params.")
    for method, table in raw_params.items():
        fields = {f.name for f in dataclasses.fields(get_method(method).Config)}
        _unknown_keys(origin, table, fields, f"pretrain.params.{method}.")
        params[method] = {
            key: _as_list(origin, f"pretrain.params.{method}.{key}", value)
            for key, value in table.items()
        }
        for key, values in params[method].items():  # types and settings, before any cell
            for value in values:
                try:
                    method_config(get_method(method), {key: value})
                except ConfigError as exc:
                    raise _error(origin, f"pretrain.params.{method}.{key}", str(exc)) from None

    exclude_keys = {*pretrain, "multi_domain"}
    if not isinstance(raw_exclude, list):
        raise _error(origin, "pretrain.exclude", 'a list of tables ({ method = "x" })')
    for entry in raw_exclude:
        if not isinstance(entry, dict) or not entry:
            raise _error(origin, "pretrain.exclude", f"{entry!r} is not a table of axis values")
        _unknown_keys(origin, entry, exclude_keys, "pretrain.exclude.")

    inits = data.get("inits", {})
    for alias, table in inits.items():
        if not isinstance(table, dict):
            raise _error(origin, f"inits.{alias}", "a table of backbone = init")
        _unknown_keys(origin, table, list(BACKBONES), f"inits.{alias}.")
    for init in pretrain["init"]:
        if init in inits:
            missing = [b for b in pretrain["backbone"] if b not in inits[init]]
            if missing:
                raise _error(origin, f"inits.{init}", f"no init for backbone {missing[0]}")

    baselines_table = data.get("baselines", {})
    _unknown_keys(origin, baselines_table, ("inits",), "baselines.")
    raw_baselines = baselines_table.get("inits", [])  # a string is one init, not letters
    baselines = tuple(raw_baselines if isinstance(raw_baselines, list) else [raw_baselines])
    _check_type(origin, "baselines.inits", list(baselines), str)

    evaluate = _parse_evaluate(origin, data.get("evaluate", {}), pretrain["dataset"], base)
    spec = GridSpec(
        name=name.strip(),
        description=str(data.get("description", "")),
        pretrain=pretrain,
        params=params,
        exclude=tuple(raw_exclude),
        baselines=baselines,
        inits=inits,
        evaluate=evaluate,
        text=text,
        origin=origin,
        base=str(Path(base).resolve()),
    )
    _check_exclusions(spec)
    return spec


def _check_exclusions(spec: GridSpec) -> None:
    """Every exclude rule drops some cell, and some pretraining cell is left."""
    every = list(_all_axes(spec))
    for rule in spec.exclude:
        if not any(_matches(rule, axes) for axes in every):
            raise _error(spec.origin, "pretrain.exclude", f"{rule!r} matches no cell")
    if not encoder_axes(spec):
        raise _error(spec.origin, "pretrain.exclude", "the rules exclude every pretraining cell")


def _parse_evaluate(
    origin: str, table: dict, pretrain_datasets: list[str], base: str | Path = "."
) -> EvaluationPlan:
    from ..ood import SCORERS
    from ..primitives.linear import PROTOCOLS
    from ..store import DTYPES

    _unknown_keys(origin, table, EVALUATE_OPTIONS, "evaluate.")
    values: dict[str, Any] = {}
    for key, value in table.items():
        kind = EVALUATE_OPTIONS[key]
        if kind is list:
            values[key] = tuple(_as_list(origin, f"evaluate.{key}", value))
        else:
            _check_type(origin, f"evaluate.{key}", [value], kind)
            values[key] = value
    default = list(dict.fromkeys(c for entry in pretrain_datasets for c in components(entry)))
    datasets = list(values.get("datasets", default))
    _check_type(origin, "evaluate.datasets", datasets, str)
    for dataset in datasets:
        if "+" in dataset:
            raise _error(origin, "evaluate.datasets", f"'{dataset}': evaluate single datasets")
    _check_datasets(origin, "evaluate.datasets", datasets)
    values["datasets"] = tuple(datasets)
    external = list(values.get("ood_datasets", ()))
    _check_type(origin, "evaluate.ood_datasets", external, str)
    _check_datasets(origin, "evaluate.ood_datasets", external)
    both = sorted(set(external) & set(datasets))
    if both or any("+" in d for d in external):
        raise _error(
            origin,
            "evaluate.ood_datasets",
            f"'{(both or external)[0]}': external OOD sets are single datasets, not also in "
            f"evaluate.datasets",
        )
    fractions = list(values.get("label_fractions", EvaluationPlan.label_fractions))
    _check_type(origin, "evaluate.label_fractions", fractions, float)
    if any(not 0 < f <= 1 for f in fractions):
        raise _error(origin, "evaluate.label_fractions", "fractions lie in (0, 1]")
    values["label_fractions"] = tuple(float(f) for f in fractions)
    _check_type(origin, "evaluate.seeds", list(values.get("seeds", [0])), int)
    l2_grid = list(values.get("l2_grid", EvaluationPlan.l2_grid))
    _check_type(origin, "evaluate.l2_grid", l2_grid, float)
    if any(v < 0 for v in l2_grid):
        raise _error(origin, "evaluate.l2_grid", "L2 strengths are 0 or positive")
    values["l2_grid"] = tuple(float(v) for v in l2_grid)
    scorers = list(values.get("scorers", EvaluationPlan.scorers))
    _check_choice(
        origin, "evaluate.scorers", [s for s in scorers if ":" not in s], list(SCORERS), "scorer"
    )
    for scorer, kwargs in values.get("params", {}).items():
        if scorer not in scorers:
            raise _error(origin, f"evaluate.params.{scorer}", "parameters of an unused scorer")
        if not isinstance(kwargs, dict):
            raise _error(origin, f"evaluate.params.{scorer}", "a table of NAME = value")
    found, params = _check_scorers(origin, scorers, values.get("params", {}), base)
    values["scorers"], values["params"] = tuple(found), params
    _check_choice(origin, "evaluate.ood_id", [values.get("ood_id", "in-domain")], OOD_ID, "value")
    _check_choice(
        origin, "evaluate.ood_splits", [values.get("ood_splits", "test")], ("test", "all"), "value"
    )
    _check_choice(
        origin, "evaluate.protocol", [values.get("protocol", "newton")], PROTOCOLS, "value"
    )
    _check_choice(origin, "evaluate.dtype", [values.get("dtype", "float32")], DTYPES, "dtype")
    for key in ("knn_k", "batch_size"):
        if values.get(key, 1) < 1:
            raise _error(origin, f"evaluate.{key}", f"must be at least 1, not {values[key]}")
    seeds = list(values.get("seeds", [0]))
    if any(seed < 0 for seed in seeds):
        raise _error(origin, "evaluate.seeds", "seeds are 0 or more")
    for key, listed in (("datasets", datasets), ("seeds", seeds), ("label_fractions", fractions)):
        repeated = sorted({str(v) for v in listed if listed.count(v) > 1})
        if repeated:
            raise _error(origin, f"evaluate.{key}", f"{', '.join(repeated)} given twice")
    return EvaluationPlan(**values)


def _check_scorers(
    origin: str, scorers: list[str], params: dict, base: str | Path
) -> tuple[list[str], dict]:
    """The scorers with plug-in files (``file.py:Class``) found relative to the grid file,
    each plug-in imported and every parameter checked against its scorer (at ``grid plan``,
    not after the cells' costly stages); the parameters keyed by scorer name, as the OOD
    evaluation takes them (a plug-in's by its class name)."""
    from ..eval.ood import check_scorer_params
    from ..ood.plugins import resolve_scorer

    found = []
    for scorer in scorers:
        path, colon, name = scorer.rpartition(":")
        if colon and path.endswith(".py"):
            scorer = f"{(Path(base) / path).resolve()}:{name}"  # the cells run from anywhere
        found.append(scorer)
    try:
        resolved = [(given, resolve_scorer(s)[1]) for given, s in zip(scorers, found, strict=True)]
        check_scorer_params(resolved, params)  # params are keyed as the grid names scorers
    except ConfigError as exc:
        raise _error(origin, "evaluate.scorers", str(exc).replace("--param ", "params.")) from None
    names = {
        given: s.rpartition(":")[2] if ":" in s else s
        for given, s in zip(scorers, found, strict=True)
    }
    return found, {names[given]: kwargs for given, kwargs in params.items()}


def load_grid(path: str | os.PathLike | None = None, preset: str | None = None) -> GridSpec:
    """Read a grid file, or a preset shipped with embedkit (``demo``, ``paper``)."""
    if path is None and preset is None:
        raise ConfigError(f"give a grid file (TOML) or --preset NAME ({', '.join(presets())})")
    if path is not None and preset is not None:
        raise ConfigError("give a grid file or --preset NAME, not both")
    if preset is not None:
        file = PRESETS_DIR / f"{preset}.toml"
        if not file.is_file():
            raise ConfigError(
                f"unknown preset '{preset}': valid presets are {', '.join(presets())}"
            )
        return parse_grid(file.read_text(), f"preset:{preset}", base=Path.cwd())
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    return parse_grid(read_text(path, f"grid file {path}"), str(path), base=path.parent)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def resolve_init(spec: GridSpec, init: str, backbone: str) -> str:
    """An init axis value as ``create_encoder`` takes it (aliases and relative paths),
    checked as far as a plan can: pretrained weights a backbone cannot take, and a bare
    name that is no init (``inits = ["x"]``) are refused; whether a weights file exists is
    checked when the grid runs (``check_weights``), so that a preset can be planned before
    its files are fetched."""
    from ..backbones import check_init

    alias = init
    if init in spec.inits:
        init = spec.inits[init][backbone]
    where = f"inits.{alias}.{backbone}" if alias in spec.inits else "inits"
    pretrained = init in ("random", "imagenet") or init.startswith("timm:")
    if not pretrained and "/" not in init and not Path(init).suffix:
        raise _error(
            spec.origin,
            where,
            f"'{init}' is neither random, imagenet, timm:TAG, a weights file (a path) nor "
            f"an alias of the grid's [inits] table ({', '.join(spec.inits) or 'none'})",
        )
    if not pretrained:
        return str((Path(spec.base) / Path(init).expanduser()).resolve())
    try:
        check_init(backbone, init)
    except EmbedkitError as exc:
        raise _error(spec.origin, where, f"'{alias}' for {backbone}: {exc}") from None
    return init


def _matches(rule: dict[str, Any], axes: dict[str, Any]) -> bool:
    return all(
        (len(components(axes["dataset"])) > 1) == value
        if key == "multi_domain"
        else axes.get(key) == value
        for key, value in rule.items()
    )


def encoder_axes(spec: GridSpec) -> list[dict[str, Any]]:
    """Every pretraining cell's axis values (exclusions dropped), in grid order."""
    return [axes for axes in _all_axes(spec) if not any(_matches(r, axes) for r in spec.exclude)]


def _all_axes(spec: GridSpec):
    names = list(spec.pretrain)
    for combo in itertools.product(*(spec.pretrain[n] for n in names)):
        axes = {
            n: v
            for n, v in zip(names, combo, strict=True)
            if n in AXES.values() or len(spec.pretrain[n]) > 1
        }
        varied = {k: v for k, v in spec.params.get(axes["method"], {}).items() if len(v) > 1}
        for values in itertools.product(*varied.values()):
            cell = dict(axes)
            cell.update({f"{axes['method']}.{k}": v for k, v in zip(varied, values, strict=True)})
            yield cell


def identity_hash(value: Any) -> str:
    """The 12-hex-digit hash that names a cell, encoder or store."""
    return stable_hash(value)[:12]
