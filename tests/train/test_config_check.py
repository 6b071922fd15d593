"""Config validation names the offending dotted key."""

import ml_collections
import pytest

from stepjax.train.config_check import (
    ConfigError,
    check_against_schema,
    check_choice,
    check_divides,
    check_positive,
)


def _schema():
    return ml_collections.ConfigDict(
        dict(seed=0, train=dict(batch_size=8, lr=1e-3, name="adamw", flag=True), free=dict(anything=1))
    )


def test_matching_config_passes():
    config = _schema()
    config.train.lr = 3  # an int where a float is expected is fine
    check_against_schema(config, _schema())


def test_unknown_key_is_named_with_suggestion():
    config = _schema().to_dict()
    config["train"]["bach_size"] = 4
    with pytest.raises(ConfigError, match=r"'config\.train\.bach_size'.*did you mean 'config\.train\.batch_size'"):
        check_against_schema(config, _schema())


def test_wrong_type_is_named():
    config = _schema().to_dict()
    config["train"]["batch_size"] = "eight"
    with pytest.raises(ConfigError, match=r"'config\.train\.batch_size' must be of type int"):
        check_against_schema(config, _schema())
    config = _schema().to_dict()
    config["train"]["flag"] = 1
    with pytest.raises(ConfigError, match=r"'config\.train\.flag' must be of type bool"):
        check_against_schema(config, _schema())


def test_section_replaced_by_scalar_is_named():
    config = _schema().to_dict()
    config["train"] = 3
    with pytest.raises(ConfigError, match=r"'config\.train' must be a section"):
        check_against_schema(config, _schema())


def test_open_sections_accept_any_keys():
    config = _schema().to_dict()
    config["free"]["new"] = "x"
    check_against_schema(config, _schema(), open_sections=("config.free",))
    with pytest.raises(ConfigError, match=r"config\.free\.new"):
        check_against_schema(config, _schema())


def test_choice_positive_divides():
    config = _schema()
    with pytest.raises(ConfigError, match=r"'config\.train\.name' is 'adamw'; expected one of \['sgd'\]"):
        check_choice(config, "config.train.name", ["sgd"])
    config.train.batch_size = 0
    with pytest.raises(ConfigError, match=r"'config\.train\.batch_size' must be > 0"):
        check_positive(config, "config.train.batch_size")
    config.train.batch_size = 6
    config.seed = 4
    with pytest.raises(
        ConfigError, match=r"'config\.train\.batch_size' \(6\) must be divisible by 'config\.seed' \(4\)"
    ):
        check_divides(config, "config.train.batch_size", "config.seed")
