"""One vocabulary: every command's options are its config's fields, with the same defaults;
``--config`` files, grid files and a run's ``config.json`` use those names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.main import get_command

from embedkit import configs
from embedkit.cli.app import dataset_option
from embedkit.cli.config import command_defaults
from embedkit.cli.main import app
from embedkit.cli.output import split_floats, split_ints, split_names

COMMANDS = get_command(app).commands
CONFIGS = {
    "pretrain": configs.PretrainConfig,
    "embed": configs.EmbedConfig,
    "quickstart": configs.QuickstartConfig,
    "probe": configs.ProbeConfig,
    "knn": configs.KNNConfig,
    "ood": configs.OODConfig,
    "transfer": configs.TransferConfig,
}
# options that are not part of what a config records: where to write, how to show it
NOT_CONFIG = {"output", "store", "out", "table_format", "progress", "debug", "config_file"}
NOT_CONFIG_OF = {"pretrain": {"resume"}}  # resuming is how a run is continued, not what it is


def _defaults(config_cls) -> dict:
    fields = {}
    for f in dataclasses.fields(config_cls):
        fields[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        nested = fields[f.name]
        if dataclasses.is_dataclass(nested):  # transfer's probe settings: its options too
            values = {n.name: getattr(nested, n.name) for n in dataclasses.fields(nested)}
            fields.update(values | {"datasets": fields.get("datasets", ())})
    return fields


def _as_config_value(text, field_default):
    """A comma-separated CLI default parsed as the command parses it."""
    if not isinstance(field_default, tuple):
        return text
    if not field_default or isinstance(field_default[0], str):
        return dataset_option(text) if text not in ("", None) else ()
    parse = split_ints if isinstance(field_default[0], int) else split_floats
    return parse(text)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_option_is_a_config_field_with_its_default(command):
    fields = _defaults(CONFIGS[command])
    skipped = NOT_CONFIG | NOT_CONFIG_OF.get(command, set())
    checked = 0
    for param in COMMANDS[command].params:
        if param.name in skipped:
            continue
        assert param.name in fields, f"{command} --{param.name} is not a config field"
        default = fields[param.name]
        if isinstance(default, dict):  # --param / --ood-group: repeated NAME=VALUE options
            assert param.multiple and param.default is None and default == {}
        elif command == "pretrain" and param.name == "loggers":
            assert split_names(param.default) if param.default else default == ()
        else:
            assert _as_config_value(param.default, default) == default, param.name
        checked += 1
    assert checked >= 5


def test_the_names_of_grid_files_are_pretrains_options():
    from embedkit.grid.spec import PRETRAIN_OPTIONS

    options = {p.name for p in COMMANDS["pretrain"].params}
    assert set(PRETRAIN_OPTIONS) <= options
    fields = _defaults(configs.PretrainConfig)
    for name, kind in PRETRAIN_OPTIONS.items():  # the grid checks the type the field has
        # a recipe's option is unset by default, and resolves to the recipe's value
        value = configs.RECIPES["paper"][name] if fields[name] is None else fields[name]
        assert isinstance(value, kind), name
    assert {"recipe", "warmup_steps", "lr", "batch_size"} <= set(PRETRAIN_OPTIONS)


def test_a_config_file_takes_field_names_and_flags():
    params = {p.name: p for p in COMMANDS["pretrain"].params if p.name != "config_file"}
    data = {
        "warmup_fraction": 0.2,  # the field, as grid files and config.json write it
        "batch-size": 64,  # a flag
        "param": {"temperature": 0.1},  # --param's flag, a table of method parameters
        "loggers": ["csv"],
    }
    defaults = command_defaults(data, "pretrain", params, Path("x.toml"))
    assert defaults == {
        "warmup_fraction": 0.2,
        "batch_size": 64,
        "method_params": ["temperature=0.1"],
        "loggers": "csv",
    }
    with pytest.raises(Exception, match="has no option warmupp"):
        command_defaults({"warmupp": 0.1}, "pretrain", params, Path("x.toml"))


def test_a_runs_config_json_maps_onto_pretrain_without_renaming():
    import json

    record = {"pretrain": dataclasses.asdict(configs.PretrainConfig()), "method_config": {}}
    params = {p.name: p for p in COMMANDS["pretrain"].params if p.name != "config_file"}
    path = Path("config.json")
    defaults = command_defaults(json.loads(json.dumps(record)), "pretrain", params, path)
    assert set(defaults) == set(record["pretrain"]) - {"patch_size"}  # 0: the backbone's


# the options whose help is their field's documentation; the others (dataset, method, backbone,
# scorer, ...) are shared by several commands and list the registries' names (cli/app.py)
DOCUMENTED = {
    "pretrain": ["batch_size", "lr", "warmup_fraction", "precision", "compile", "loggers"],
    "embed": ["run", "splits", "overwrite", "resume", "dtype", "with_head"],
    "probe": ["datasets", "label_fractions", "seeds", "protocol"],
    "knn": ["datasets", "k", "temperature", "weighting", "metric"],
    "ood": ["id_datasets", "ood_datasets", "ood_splits", "save_scores"],
    "transfer": ["datasets", "metric"],
}


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_an_options_help_is_its_fields_documentation(command):
    from embedkit.registry import documented_parameters

    docs = documented_parameters(CONFIGS[command], "Attributes")
    helps = {p.name: p.help for p in COMMANDS[command].params}
    for name in DOCUMENTED[command]:
        text = " ".join(docs[name].replace("``", "").split())
        assert helps[name].lower().startswith(text.lower()), (name, helps[name])
