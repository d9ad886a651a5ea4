"""``vlsearch train``'s options are generated from the config dataclasses: every field is an option, with
the dataclass's default in the option and in the help text, and a new field needs no code."""
from __future__ import annotations

import dataclasses
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from retrieval.core.captions import FORMATS
from retrieval.app.cli import COMMANDS, cli
from retrieval.core.options import config_fields, config_options, convert_field, explicit, field_default, shown
from retrieval.app.cli_train import train
from retrieval.core.config import DataConfig, ModelConfig, TrainConfig
from retrieval.core.loss import LOSSES
from retrieval.core.model import POOL_GRID

CLASSES = (DataConfig, ModelConfig, TrainConfig)


def help_text() -> str:
    result = CliRunner().invoke(cli, ["train", "--help"], terminal_width=1000, max_content_width=1000)
    assert result.exit_code == 0, result.output
    return result.output


def help_entries() -> dict[str, str]:
    """First option name -> its whole entry in ``vlsearch train --help`` (wide, so one line or two)."""
    entries: dict[str, str] = {}
    for line in help_text().split("Options:")[1].splitlines():
        if line.startswith("  -"):
            name = re.split(r"[\s/]", line.strip())[0]
            entries[name] = line
        elif line.strip():
            entries[name] += " " + line.strip()
    return entries


def shown_default(name: str, value: object) -> str:
    if isinstance(value, bool):
        return name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


@pytest.mark.parametrize("name", list(config_fields(*CLASSES)))
def test_every_field_is_an_option_with_the_dataclass_default(name: str):
    cls, spec = config_fields(*CLASSES)[name]
    if not shown(spec):
        pytest.skip(f"{name} is hidden from the command line")
    options = {param.name: param for param in train.params}
    option = options[name]
    assert option.opts[0] == "--" + name.replace("_", "-")
    default = field_default(spec)
    assert option.type_cast_value(click.Context(train), option.default) == default
    assert spec.metadata.get("help"), f"{cls.__name__}.{name} has no help"
    line = help_entries()[option.opts[0]]
    if default is None:
        assert "[default:" not in line
    else:
        assert f"[default: {shown_default(name, default)}" in line, line


def test_help_names_the_old_options_and_the_new_ones():
    entries = help_entries()
    for option in ("--captions", "--images", "--out", "--format", "--val-captions", "--split", "--backbone",
                   "--weights", "--image-size", "--pool", "--drop-stages", "--embed-dim", "--hidden-size", "--epochs",
                   "--batch-size", "--lr", "--loss", "--margin", "--captions-per-image", "--pair-weight",
                   "--freeze-backbone", "--feature-cache", "--no-augment", "--no-flip", "--workers", "--device",
                   "--seed", "--word-dim", "--gru-layers", "--weight-decay", "--warmup-epochs", "--precision",
                   "--init", "--stages", "--recipe"):
        assert option in entries or option.replace("--no-", "--") in entries, option


def test_closed_sets_agree_with_the_code_that_uses_them():
    choices = {name: spec.metadata["choices"] for name, (_, spec) in config_fields(*CLASSES).items()
               if "choices" in spec.metadata}
    assert choices["pool"] == tuple(POOL_GRID)
    assert choices["loss"] == LOSSES
    assert choices["format"] == FORMATS


@dataclass
class Future:
    """Fields of every kind a helper might add tomorrow."""

    input_mean: tuple[float, float, float] = field(default=(0.485, 0.456, 0.406), metadata={"help": "Mean."})
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "Layers."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout.", "min": 0, "max": 1})
    tied: bool = field(default=True, metadata={"help": "Tie them."})
    note: str | None = field(default=None, metadata={"help": "A note."})
    secret: int = field(default=3, metadata={"cli": False})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "A closed set by its type."})
    where: Path = field(default=Path("runs"), metadata={"help": "A path."})
    extra: dict[str, int] = field(default_factory=dict, metadata={"help": "Anything else: JSON."})


@click.command()
@config_options(Future)
@click.pass_context
def future(ctx: click.Context, **options: object) -> None:
    click.echo(repr(sorted(options.items())))
    click.echo(repr(sorted(explicit(ctx, options))))


def test_a_new_field_of_any_kind_becomes_an_option_with_no_code():
    result = CliRunner().invoke(future, [])
    assert result.exit_code == 0, result.output
    values, given = (eval(line, {"PosixPath": Path}) for line in result.output.splitlines())  # noqa: S307
    assert dict(values) == {k: v for k, v in dataclasses.asdict(Future()).items() if k != "secret"}
    assert given == []
    result = CliRunner().invoke(future, ["--input-mean", "0.5, 0.25,1", "--layers", "4", "--no-tied", "--note", "x",
                                         "--dropout", "0.5", "--mode", "slow", "--where", "a/b", "--extra", '{"k": 1}'])
    assert result.exit_code == 0, result.output
    values, given = (eval(line, {"PosixPath": Path}) for line in result.output.splitlines())  # noqa: S307
    assert dict(values) == {"input_mean": (0.5, 0.25, 1.0), "layers": [4], "tied": False, "note": "x", "dropout": 0.5,
                            "mode": "slow", "where": Path("a/b"), "extra": {"k": 1}}
    assert given == ["dropout", "extra", "input_mean", "layers", "mode", "note", "tied", "where"]
    assert "--secret" not in CliRunner().invoke(future, ["--help"]).output


@pytest.mark.parametrize("args, message", [
    (["--input-mean", "0.5,0.5"], "expected 3 values, got 2"),
    (["--input-mean", "a,b,c"], "'a' is not a valid float"),
    (["--dropout", "2"], "2.0 is not in the range 0<=x<=1"),
    (["--secret", "4"], "No such option '--secret'"),
    (["--mode", "medium"], "'medium' is not one of 'fast', 'slow'"),
    (["--extra", "{"], "not JSON"),
])
def test_bad_values_of_generated_options_are_usage_errors(args: list[str], message: str):
    result = CliRunner().invoke(future, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("name, value, converted", [
    ("input_mean", [1, 2.5, 3], (1.0, 2.5, 3.0)), ("layers", [], []), ("dropout", 1, 1.0), ("note", None, None),
    ("tied", False, False), ("where", "x/y", Path("x/y")), ("extra", {"a": 2}, {"a": 2}),
])
def test_recipe_values_convert_like_options(name: str, value: object, converted: object):
    spec = next(f for f in dataclasses.fields(Future) if f.name == name)
    assert convert_field(Future, spec, value) == converted


@pytest.mark.parametrize("name, value, message", [
    ("input_mean", [1, 2], "expected 3 values, got 2"), ("input_mean", "1,2,3", "expected a list"),
    ("dropout", "0.5", "expected a number"), ("dropout", True, "expected a number"), ("dropout", 3, "range"),
    ("tied", 1, "expected true or false"), ("mode", "medium", "not one of"), ("where", 3, "expected a string"),
    ("secret", 2.5, "expected an integer"), ("secret", None, "null"),
])
def test_recipe_values_are_checked_like_options(name: str, value: object, message: str):
    spec = next(f for f in dataclasses.fields(Future) if f.name == name)
    with pytest.raises(ValueError, match=message):
        convert_field(Future, spec, value)


def test_a_name_in_two_dataclasses_is_refused():
    @dataclass
    class Clash:
        epochs: int = 1

    with pytest.raises(TypeError, match="'epochs' is in both TrainConfig and Clash"):
        config_fields(TrainConfig, Clash)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_command_table_says_what_each_command_says_of_itself(name: str) -> None:
    """`vlsearch --help` lists commands without importing them; its lines are the commands' own first lines."""
    module, attribute, line = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert command.help.strip().splitlines()[0] == line
    assert line in CliRunner().invoke(cli, ["--help"], terminal_width=200).stdout
