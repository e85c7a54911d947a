"""The search space: choices, encodings, overrides and validation errors."""

import re

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
        config = space.sample(rng, "image")
        assert space.decode(space.indices(config, "image"), "image") == config
        enc = space.encode(config, "image")
        assert enc.shape == (len(space.dims),) and enc.dtype == np.float32
        assert np.all((enc >= 0) & (enc <= 1))


def test_learning_rate_is_encoded_on_a_log_scale(space):
    lrs = space.choices["learning_rate"]
    default = space.default_config("image")
    encs = [space.encode(default.__class__(**{**default.to_dict(), "learning_rate": lr}), "image")[0] for lr in lrs]
    assert np.allclose(np.diff(encs), np.diff(encs)[0], atol=0.02)  # 1e-4, 3e-4, ... evenly spaced


def test_config_key_ignores_epochs_and_is_stable(space):
    d = space.default
    assert d.key() == d.with_epochs(1).key()
    assert d.key() != Config(**{**d.to_dict(), "units": 128}).key()
    # The same config gives the same key on any machine: the store depends on it.
    assert d.key() == "4f9271354afa7ec1"


def test_action_outside_the_space_is_a_clear_error(space):
    with pytest.raises(RlhpoError, match="outside the 7 choices"):
        space.decode([7, 0, 0, 0, 0, 0, 0, 0, 0], "image")
    with pytest.raises(RlhpoError, match="needs 9 indices"):
        space.decode([0, 0], "image")


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


# ------------------------------------------------------------------ families

FAMILY_CHOICES = """
  family:
    image: [cnn, mlp]
    text: [bow, textcnn, gru, lstm, transformer]
    tabular: [mlp]
"""
FAMILY_DEFAULT = """
  family: {image: cnn, text: bow, tabular: mlp}
"""


def family_space_yaml(choices: str = FAMILY_CHOICES, default: str = FAMILY_DEFAULT) -> str:
    """The shipped space's YAML with the given family blocks in place of its own."""
    from rlhpo.settings import SHIPPED_SPACE, shipped_file

    text = re.sub(r"\n  family:.*?(?=\n\S|\Z)", "", shipped_file(SHIPPED_SPACE).read_text(), flags=re.S)
    head, tail = text.split("\ndefault:", 1)
    return head.rstrip() + choices + "\ndefault:" + tail.rstrip() + default


@pytest.fixture(scope="module")
def family_space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(family_space_yaml())
    return load_search_space(path)


def test_the_shipped_space_searches_the_family_with_the_default_config_best_families(space):
    assert space.families == {
        "image": ("cnn", "mlp"),
        "text": ("bow", "textcnn", "gru", "lstm", "transformer"),
        "tabular": ("mlp",),
    }
    assert space.default_families == {"image": "cnn", "text": "bow", "tabular": "mlp"}


def test_a_config_without_a_family_keeps_the_key_it_always_had(space):
    # The shipped meta-dataset's key of the default config, recorded before families were searched.
    assert space.default.key() == "4f9271354afa7ec1" and "family" not in space.default.to_dict()
    assert space.default.with_family("bow").key() != space.default.key()


def test_a_family_space_has_a_ninth_dimension_read_within_the_modality(family_space):
    assert family_space.dims == (*HYPERPARAMETERS, "family") and family_space.nvec[-1] == 5
    base = list(family_space.indices(family_space.default_config("text"), "text"))
    for i in range(5):
        action = base[:-1] + [i]
        assert family_space.decode(action, "text").family == ("bow", "textcnn", "gru", "lstm", "transformer")[i]
        assert family_space.decode(action, "image").family == ("cnn", "mlp")[i % 2]  # never a text family
        assert family_space.decode(action, "tabular").family == "mlp"
        assert family_space.decode(action, "text", family="lstm").family == "lstm"  # a pinned family wins
    assert family_space.default_config("image").family == "cnn"
    assert family_space.default_config("text").family == "bow"


def test_family_configs_round_trip_and_encode_in_range(family_space):
    rng = np.random.default_rng(0)
    for modality in ("image", "text", "tabular"):
        for _ in range(30):
            config = family_space.sample(rng, modality)
            assert config.family in family_space.family_choices(modality)
            assert family_space.decode(family_space.indices(config, modality), modality) == config
            enc = family_space.encode(config, modality)
            assert enc.shape == (9,) and np.all((enc >= 0) & (enc <= 1))
    assert family_space.from_dict(family_space.to_dict()) == family_space


def test_a_space_saved_before_families_loads_without_them(space):
    saved = space.to_dict()
    del saved["choices"]["family"], saved["default"]["family"]
    old = space.from_dict(saved)
    assert old.families is None and old.dims == HYPERPARAMETERS and old.nvec == space.nvec[:-1]


@pytest.mark.parametrize(
    ("choices", "default", "message"),
    [
        ("\n  family:\n    image: [cnn, gru]\n", "\n  family: {image: cnn}\n", "family for image data.*'gru'"),
        (FAMILY_CHOICES, "\n  family: {image: cnn, text: cnn, tabular: mlp}\n", "default text family 'cnn'"),
        (FAMILY_CHOICES, "\n  family: {image: cnn}\n", "one family for each modality"),
        ("\n  family: [cnn, bow]\n", FAMILY_DEFAULT, "mapping of modality to families"),
    ],
)
def test_bad_family_choices_are_clear_errors(tmp_path, choices, default, message):
    path = tmp_path / "space.yaml"
    path.write_text(family_space_yaml(choices, default))
    with pytest.raises(RlhpoError, match=message):
        load_search_space(path)


def test_set_family_overrides_and_checks_the_name(family_space):
    assert family_space.override(family_space.default, {"family": "textcnn"}).family == "textcnn"
    with pytest.raises(RlhpoError, match="family=rnn is not one of the choices"):
        family_space.override(family_space.default, {"family": "rnn"})
