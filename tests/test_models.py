"""Model families: each builds from the hyperparameters and maps its input to logits."""

import math
from pathlib import Path

import pytest
import torch

from rlhpo.errors import RlhpoError
from rlhpo.models import (
    BOW_BUCKETS,
    FAMILIES,
    TEXT_FAMILIES,
    bag_ids,
    bigram_ids,
    build_model,
    masked_mean,
    model_for,
)
from rlhpo.space import Config
from rlhpo.tasks import load_task
from rlhpo.tasks.task import Task, TaskData
from rlhpo.training import Curve, train

SEQ_LEN, VOCAB = 12, 50
INPUTS = {
    "cnn": (3, 16, 16),
    "mlp": (1, 8, 8),
    "gru": (SEQ_LEN,),
    "lstm": (SEQ_LEN,),
    "transformer": (SEQ_LEN,),
    "bow": (SEQ_LEN,),
    "textcnn": (SEQ_LEN,),
}
# Learns trec in a few seconds: 3 epochs of 300 examples.
QUICK = Config(1e-2, 16, 3, 0.0, "adam", 0.0, num_layers=1, units=32)


def _batch(family: str, n: int, gen: torch.Generator) -> torch.Tensor:
    shape = INPUTS[family]
    if family in ("cnn", "mlp"):
        return torch.randn(n, *shape, generator=gen)
    tokens = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=gen)
    tokens[:, SEQ_LEN // 2 :] = 0  # right padding, as the tasks produce it
    return tokens


TRAIN_TOKENS = torch.randint(1, VOCAB, (40, SEQ_LEN), generator=torch.Generator().manual_seed(1))  # bow's idf


def _model(family: str, *, num_layers: int = 2, units: int = 32, dropout: float = 0.1, n_classes: int = 5):
    return build_model(
        family,
        input_shape=INPUTS[family],
        n_classes=n_classes,
        vocab_size=VOCAB,
        num_layers=num_layers,
        units=units,
        dropout=dropout,
        train_tokens=TRAIN_TOKENS if family in TEXT_FAMILIES else None,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_maps_a_batch_to_logits(family):
    gen = torch.Generator().manual_seed(0)
    model = _model(family)
    logits = model(_batch(family, 4, gen))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    logits.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_size_follows_units_and_layers(family):
    def n_params(**kw):
        return sum(p.numel() for p in _model(family, **kw).parameters())

    assert n_params(units=64) > n_params(units=32)
    assert n_params(num_layers=3) > n_params(num_layers=1)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_models_ignore_padding(family):
    """Logits of a text do not depend on how much padding follows it."""
    torch.manual_seed(0)
    model = _model(family).eval()
    tokens = torch.zeros(2, SEQ_LEN, dtype=torch.long)
    tokens[0, :4] = torch.tensor([5, 9, 2, 7])
    tokens[1, :6] = torch.tensor([5, 9, 2, 7, 11, 3])
    with torch.inference_mode():
        padded, shorter = model(tokens), model(tokens[:, :6])  # 8 and 2 pads after the first text
    assert torch.allclose(padded, shorter, atol=1e-5)
    assert not torch.allclose(padded[0], padded[1], atol=1e-3)  # the real tokens do count


@pytest.mark.parametrize("family", ["bow", "textcnn"])
def test_texts_shorter_than_the_widest_window_work(family):
    """A text of 1 or 2 tokens, unpadded, gives the logits it gets with padding."""
    torch.manual_seed(0)
    model = _model(family).eval()
    padded = torch.zeros(2, SEQ_LEN, dtype=torch.long)
    padded[0, :1], padded[1, :2] = 7, torch.tensor([5, 9])
    with torch.inference_mode():
        assert torch.allclose(model(padded[1:, :2]), model(padded[1:]), atol=1e-5)
        assert torch.allclose(model(padded[:1, :1]), model(padded[:1]), atol=1e-5)


def test_bow_sees_word_order_through_bigrams():
    torch.manual_seed(0)
    model = _model("bow").eval()
    tokens = torch.tensor([[5, 9, 2, 7, 0, 0], [7, 2, 9, 5, 0, 0]])  # the same words, reversed
    with torch.inference_mode():
        logits = model(tokens)
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)


def test_bow_weighs_terms_as_sklearns_tfidf_vectorizer():
    """bow's first layer sees sklearn's sublinear TF-IDF vector of the token and bigram terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    test_tokens = torch.randint(1, VOCAB, (6, SEQ_LEN), generator=torch.Generator().manual_seed(2))
    test_tokens[:, 8:] = 0
    test_tokens[0, :4] = torch.tensor([5, 5, 5, 9])  # a term with tf 3

    def terms(row: torch.Tensor) -> list[int]:
        return [int(t) for t in bag_ids(row.unsqueeze(0), VOCAB)[0] if t != 0]

    vectorizer = TfidfVectorizer(analyzer=terms, sublinear_tf=True).fit(list(TRAIN_TOKENS))
    expected = torch.zeros(len(test_tokens), VOCAB + BOW_BUCKETS, dtype=torch.float64)
    sparse = vectorizer.transform(list(test_tokens)).tocoo()
    columns = torch.tensor(vectorizer.get_feature_names_out()[sparse.col].astype(int))
    expected[torch.tensor(sparse.row), columns] = torch.tensor(sparse.data)

    bag, weights = _model("bow").tfidf(test_tokens)
    got = torch.zeros_like(expected).scatter_add_(1, bag, weights.double())
    got[:, 0] = 0.0  # padding entries weigh 0 and the embedding skips them
    assert torch.allclose(got, expected, atol=1e-6)


def test_bow_keeps_rows_for_the_training_terms_only_and_computes_what_a_whole_table_would():
    model = _model("bow").eval()
    used = int((model.idf > 0).sum())
    assert model.embed.weight.shape[0] == used + 1 < len(model.idf)  # the padding row and one per training term
    whole = torch.zeros(len(model.idf), model.embed.weight.shape[1])
    whole[model.idf > 0] = model.embed.weight[1:].detach()  # each term's row where a whole table has it
    tokens = _batch("bow", 4, torch.Generator().manual_seed(3))
    tokens[0, 1] = VOCAB - 1  # maybe a term unseen in training: no row, no weight
    bag, weights = model.tfidf(tokens)
    with torch.inference_mode():
        expected = model.net(
            torch.nn.functional.embedding_bag(bag, whole, per_sample_weights=weights, mode="sum") + model.bias
        )
        assert torch.allclose(model(tokens), expected, atol=1e-6)


def test_bow_needs_the_training_tokens_for_its_idf():
    with pytest.raises(RlhpoError, match="training tokens"):
        build_model("bow", input_shape=(SEQ_LEN,), n_classes=2, vocab_size=VOCAB, num_layers=1, units=8, dropout=0.0)


def test_bigram_ids_hash_real_pairs_past_the_vocabulary():
    tokens = torch.tensor([[3, 4, 3, 4, 0], [4, 3, 0, 0, 0]])
    ids = bigram_ids(tokens, VOCAB)
    assert ids.shape == (2, 4)
    assert ids[0, 0] == ids[0, 2] != ids[0, 1]  # (3, 4) twice, (4, 3) once
    assert ids[1, 0] == ids[0, 1]
    assert ids[0, 3] == ids[1, 1] == ids[1, 2] == 0  # a pair with padding is padding
    real = ids[ids != 0]
    assert ((real >= VOCAB) & (real < VOCAB + BOW_BUCKETS)).all()


@pytest.mark.parametrize("num_layers", [1, 3])
def test_textcnn_stacks_a_conv_per_layer_on_each_branch(num_layers):
    model = _model("textcnn", num_layers=num_layers, units=16)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert sorted(c.kernel_size[0] for c in convs) == sorted([3, 4, 5] + [3] * 3 * (num_layers - 1))
    assert all(c.out_channels == 16 for c in convs)
    assert model(_batch("textcnn", 3, torch.Generator().manual_seed(0))).shape == (3, 5)


def _without_seconds(curve: Curve) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in curve.to_dict()["epochs"]]


@pytest.mark.parametrize("family", ["bow", "textcnn"])
def test_new_text_families_learn_trec_and_repeat(family, data_dir: Path):
    """300 real questions, 3 epochs: better than the majority class; the same seed, the same curve."""
    data = load_task(Task("trec", family=family, n_train=300), data_dir=data_dir)
    curve = train(data, QUICK)
    assert not curve.diverged and len(curve.epochs) == 3
    assert all(math.isfinite(v) for e in _without_seconds(curve) for v in e.values())
    majority = data.y_val.bincount().max().item() / len(data.y_val)
    assert curve.epochs[-1].val_accuracy > 1.5 * majority  # about 0.23 on trec
    assert curve.epochs[-1].train_loss < curve.epochs[0].train_loss
    again = _without_seconds(train(data, QUICK, epochs=1))  # a run's first epoch does not depend on its length
    assert again == _without_seconds(curve)[:1]
    assert _without_seconds(train(data, QUICK, epochs=1, seed=1)) != again


def test_cnn_skips_pooling_once_the_map_is_one_pixel():
    model = build_model("cnn", input_shape=(1, 3, 3), n_classes=2, vocab_size=None, num_layers=4, units=8, dropout=0.0)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1  # 3 -> 1, then no more
    assert model(torch.randn(2, 1, 3, 3)).shape == (2, 2)


def test_transformer_is_sized_by_the_config():
    model = _model("transformer", num_layers=3, units=128, dropout=0.25)
    cfg = model.encoder.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (3, 128, 4, 256)
    assert cfg.hidden_dropout_prob == cfg.attention_probs_dropout_prob == 0.25
    assert cfg.max_position_embeddings == SEQ_LEN


def test_dropout_is_used():
    model = _model("mlp", dropout=0.5)
    x = torch.randn(8, *INPUTS["mlp"])
    torch.manual_seed(0)
    a = model.train()(x)
    b = model(x)
    assert not torch.equal(a, b)
    assert torch.equal(model.eval()(x), model(x))


def test_model_for_takes_task_data_and_config():
    x = torch.randint(1, VOCAB, (6, SEQ_LEN))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    data = TaskData(Task("toy", "gru"), "text", "gru", x, y, x, y, x, y, ("a", "b", "c"), "test", vocab_size=VOCAB)
    config = Config(1e-3, 32, 1, 0.0, "adam", 0.0, num_layers=3, units=64)
    model = model_for(data, config)
    assert (model.rnn.num_layers, model.rnn.hidden_size) == (3, 64)
    assert model(x).shape == (6, 3)


def test_unknown_family_names_the_valid_ones():
    with pytest.raises(RlhpoError, match="Did you mean 'lstm'"):
        build_model("lstn", input_shape=(5,), n_classes=2, vocab_size=10, num_layers=1, units=8, dropout=0.0)


def test_wrong_input_shape_is_an_error():
    with pytest.raises(RlhpoError, match="input shape"):
        build_model("cnn", input_shape=(64,), n_classes=2, vocab_size=None, num_layers=1, units=8, dropout=0.0)
    with pytest.raises(RlhpoError, match="vocabulary"):
        build_model("gru", input_shape=(64,), n_classes=2, vocab_size=None, num_layers=1, units=8, dropout=0.0)


def test_masked_mean_averages_real_positions_only():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[0.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(hidden, mask).flatten().tolist() == [2.0, 0.0]  # an all-padding row gives 0, not NaN
