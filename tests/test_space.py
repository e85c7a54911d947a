"""The search space: choices, encodings, overrides and validation errors."""

import numpy as np
import pytest

from rlhpo.errors import RlhpoError
from rlhpo.space import HYPERPARAMETERS, Config, load_search_space


@pytest.fixture(scope="module")
def space():
    return load_search_space()


def test_default_is_the_plan_example(space):
    d = space.default
    assert (d.optimizer, d.learning_rate, d.batch_size, d.dropout) == ("adam", 1e-3, 32, 0.5)
    assert (d.weight_decay, d.num_layers, d.units, d.epochs) == (1e-4, 3, 64, space.max_epochs)
    assert set(space.choices["optimizer"]) == {"sgd", "adam", "adamw", "rmsprop"}


def test_decode_indices_roundtrip(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        config = space.sample(rng)
        assert space.decode(space.indices(config)) == config
        enc = space.encode(config)
        assert enc.shape == (len(HYPERPARAMETERS),) and enc.dtype == np.float32
        assert np.all((enc >= 0) & (enc <= 1))


def test_learning_rate_is_encoded_on_a_log_scale(space):
    lrs = space.choices["learning_rate"]
    encs = [space.encode(space.default.__class__(**{**space.default.to_dict(), "learning_rate": lr}))[0] for lr in lrs]
    assert np.allclose(np.diff(encs), np.diff(encs)[0], atol=0.02)  # 1e-4, 3e-4, ... evenly spaced


def test_config_key_ignores_epochs_and_is_stable(space):
    d = space.default
    assert d.key() == d.with_epochs(1).key()
    assert d.key() != Config(**{**d.to_dict(), "units": 128}).key()
    # The same config gives the same key on any machine: the store depends on it.
    assert d.key() == "4f9271354afa7ec1"


def test_action_outside_the_space_is_a_clear_error(space):
    with pytest.raises(RlhpoError, match="outside the 7 choices"):
        space.decode([7, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(RlhpoError, match="needs 8 indices"):
        space.decode([0, 0])


def test_override_parses_and_checks_values(space):
    c = space.override(space.default, {"learning_rate": "0.003", "optimizer": "sgd", "units": "128"})
    assert (c.learning_rate, c.optimizer, c.units) == (3e-3, "sgd", 128)
    with pytest.raises(RlhpoError, match=r"learning_rate=0.005 is not one of the choices \[0.0001"):
        space.override(space.default, {"learning_rate": "0.005"})
    with pytest.raises(RlhpoError, match="Did you mean 'learning_rate'"):
        space.override(space.default, {"learning_rat": "0.001"})


def test_yaml_errors_name_the_valid_keys(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("choices:\n  learning_rate: [0.001]\n  batchsize: [32]\n")
    with pytest.raises(RlhpoError, match="Did you mean 'batch_size'"):
        load_search_space(path)
    path.write_text(
        "choices: {learning_rate: [0.001], batch_size: [32], epochs: [1], dropout: [0.0], optimizer: [adam],"
        " weight_decay: [0.0], num_layers: [1], units: [8]}\n"
        "default: {learning_rate: 0.01, batch_size: 32, epochs: 1, dropout: 0.0, optimizer: adam,"
        " weight_decay: 0.0, num_layers: 1, units: 8}\n"
    )
    with pytest.raises(RlhpoError, match="learning_rate=0.01 is not one of the choices"):
        load_search_space(path)


def test_a_narrowed_space_loads(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "choices: {learning_rate: [0.001, 0.01], batch_size: [32], epochs: [1, 2], dropout: [0.0], optimizer: [adam],"
        " weight_decay: [0.0], num_layers: [1], units: [8]}\n"
        "default: {learning_rate: 0.01, batch_size: 32, epochs: 2, dropout: 0.0, optimizer: adam,"
        " weight_decay: 0.0, num_layers: 1, units: 8}\n"
    )
    space = load_search_space(path)
    assert space.size() == 4 and space.max_epochs == 2
