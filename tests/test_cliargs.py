"""Config flags from the dataclasses and TOML files: names, types, precedence, unknown keys."""

import argparse
import dataclasses

import pytest

from rnnkit.cliargs import add_config_flags, build_config, config_overrides, load_toml, parse_bool, to_toml
from rnnkit.errors import ConfigError
from rnnkit.tasks.language_model import LMConfig


def _parser():
    p = argparse.ArgumentParser()
    add_config_flags(p, LMConfig)
    return p


def test_every_field_has_a_kebab_flag_with_help_and_default():
    p = _parser()
    options = {a.dest: a for a in p._actions}
    for cls in LMConfig.sections().values():
        for f in dataclasses.fields(cls):
            action = options[f.name]
            assert "--" + f.name.replace("_", "-") in action.option_strings
            assert f.metadata["help"] in action.help and f"default: {f.default}" in action.help


def test_only_given_flags_are_overrides_and_types_convert():
    args = _parser().parse_args(["--hidden-size", "32", "--lr", "0.01", "--tie-weights", "false", "--mode", "gru"])
    assert config_overrides(args, LMConfig) == {
        "model": {"hidden_size": 32, "tie_weights": False, "mode": "gru"},
        "train": {"lr": 0.01},
    }
    assert config_overrides(_parser().parse_args([]), LMConfig) == {}


def test_parse_bool():
    assert parse_bool("Yes") is True and parse_bool("0") is False
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("maybe")


def test_precedence_defaults_toml_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nhidden_size = 40\nmode = 'gru'\n[train]\nlr = 0.5\n")
    cfg = build_config(path, {"model": {"hidden_size": 24}}, LMConfig)
    assert cfg.model.hidden_size == 24  # flag beats TOML
    assert cfg.model.mode == "gru" and cfg.train.lr == 0.5  # TOML beats default
    assert cfg.train.bptt == LMConfig().train.bptt  # default
    assert build_config(None, {}, LMConfig) == LMConfig()


def test_toml_round_trip(tmp_path):
    cfg = LMConfig.from_dict(
        {
            "model": {"mode": "elman", "hidden_size": 7, "tie_weights": False},
            "data": {"data": 'a "b".txt'},
            "train": {"lr": 1e-4, "max_steps": 3},
        }
    )
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert build_config(path, {}, LMConfig) == cfg


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[model]\nhiden_size = 3\n", "'hiden_size'"),
        ("[modle]\n", "'modle'"),
        ("model = 3\n", "model"),
        ("[model\n", "TOML"),
    ],
)
def test_toml_errors_name_the_key_and_file(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_toml(path, LMConfig)
    assert needle in str(info.value) and str(path) in str(info.value)
