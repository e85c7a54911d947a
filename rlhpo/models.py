"""Model families, each built from the hyperparameters ``num_layers``, ``units`` and ``dropout``.

- ``cnn`` (images ``(C, H, W)``): ``num_layers`` blocks of conv3x3 → BatchNorm → ReLU →
  MaxPool2 (pooling skipped once the feature map is smaller than 2), global average pool,
  dropout, linear.
- ``mlp`` (any input, flattened): ``num_layers`` × [Linear(units), ReLU, Dropout], linear.
- ``gru`` / ``lstm`` (token ids ``(L,)``, 0 = padding): embedding, dropout, a unidirectional
  ``num_layers`` RNN, mean over the non-padding positions, dropout, linear. Unidirectional
  because text is right-padded: its outputs at real tokens never see the padding, so no
  packing is needed, and it costs half a bidirectional RNN on CPU.
- ``transformer`` (token ids): a randomly initialised ``transformers`` BERT encoder sized by
  the hyperparameters, mean over the non-padding positions, linear.
- ``bow`` (token ids): a TF-IDF-weighted bag of n-grams, Galke & Scherp's "WideMLP" (ACL 2022)
  over fastText's hashed bigrams. The terms of a text are its token ids and its bigrams (adjacent
  pairs of real tokens ``a, b``, bucket ``(a * 116049371 + b) mod 2**16`` of ``BOW_BUCKETS``,
  fastText's multiplier). A text is the vector of its terms' sublinear tf x smooth idf,
  L2-normalised: sklearn's ``TfidfVectorizer(sublinear_tf=True)`` over these terms. The idf is
  that of the training tokens the model is built for (``train_tokens``; terms absent there weigh
  0), kept in the model as a buffer. The first layer multiplies that vector by a table of
  ``units``-wide rows (an ``EmbeddingBag`` sum with per-sample weights, initialised N(0, 0.01^2):
  EmbeddingBag's own N(0, 1) is noise 9 epochs of Adam do not outgrow), adds a bias, then ReLU
  and Dropout; ``num_layers - 1`` more [Linear(units), ReLU, Dropout]; a linear head. Bigram
  ids and weights are computed from the token ids in ``forward``, so the tasks need nothing new.
- ``textcnn`` (token ids): Kim (2014). A ``units``-wide embedding; three parallel branches of
  Conv1d with ``units`` channels and widths 3, 4 and 5, each followed by ReLU; each further layer
  (``num_layers`` > 1) is one more width-3, same-padded Conv1d + ReLU on every branch. Then max
  over time, concatenation (3 × units), dropout, linear. Every window starts at a token: the
  embedded text gets 4 zero positions on the right, so texts shorter than 5 tokens work, and
  positions at padding are zeroed after each layer, so padding changes no logit.

Text embeddings (and ``bow``'s first layer) are ``units`` wide in every text family, as in the RNNs.

Weights are initialised from torch's global RNG: seed it (the trainer does) for repeatable models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rlhpo.errors import RlhpoError, unknown
from rlhpo.tasks.task import FAMILIES_BY_MODALITY

if TYPE_CHECKING:
    from rlhpo.space import Config
    from rlhpo.tasks.task import TaskData

FAMILIES = tuple(dict.fromkeys(f for listed in FAMILIES_BY_MODALITY.values() for f in listed))
TEXT_FAMILIES = FAMILIES_BY_MODALITY["text"]
PAD_ID = 0
BOW_BUCKETS = 2**16  # hashed bigram buckets of ``bow``
BIGRAM_MULTIPLIER = 116049371  # fastText's n-gram hash multiplier
BOW_INIT_STD = 0.01  # the init of ``bow``'s first layer
TEXTCNN_WIDTHS = (3, 4, 5)


def build_model(
    family: str,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    vocab_size: int | None,
    num_layers: int,
    units: int,
    dropout: float,
    train_tokens: torch.Tensor | None = None,
) -> nn.Module:
    """A freshly initialised classifier of one family; it maps a batch of inputs to logits.

    ``train_tokens`` (N, L): the training split's token ids, which ``bow`` takes its idf from
    (needed for ``bow`` only).
    """
    if family not in FAMILIES:
        raise unknown("model family", family, FAMILIES)
    if num_layers < 1 or units < 1 or not 0.0 <= dropout < 1.0 or n_classes < 2:
        raise RlhpoError(
            f"A model needs num_layers >= 1, units >= 1, 0 <= dropout < 1 and n_classes >= 2, "
            f"but got {num_layers=}, {units=}, {dropout=}, {n_classes=}."
        )
    if family == "cnn":
        _check_shape(family, input_shape, 3, "images (channels, height, width)")
        return ConvNet(input_shape, n_classes, num_layers, units, dropout)
    if family == "mlp":
        return MLP(math.prod(input_shape), n_classes, num_layers, units, dropout)
    _check_shape(family, input_shape, 1, "token ids (sequence length,)")
    if vocab_size is None or vocab_size < 2:
        raise RlhpoError(f"Family {family!r} needs a vocabulary of at least 2 token ids, but got {vocab_size=}.")
    if family == "transformer":
        return _bert_classifier(input_shape[0], vocab_size, n_classes, num_layers, units, dropout)
    if family == "bow":
        if train_tokens is None:
            raise RlhpoError("Family 'bow' weighs its terms by their idf, and needs the training tokens for it.")
        return BagOfNgrams(vocab_size, n_classes, num_layers, units, dropout, smooth_idf(train_tokens, vocab_size))
    if family == "textcnn":
        return TextCNN(vocab_size, n_classes, num_layers, units, dropout)
    return RNNClassifier(family, vocab_size, n_classes, num_layers, units, dropout)


def model_family(data: TaskData, config: Config) -> str:
    """The family a config trains on a task: its own, else the task's; an error names the valid ones."""
    family = config.family or data.family
    valid = FAMILIES_BY_MODALITY[data.modality]
    if family not in valid:
        raise unknown(f"family for {data.modality} data", family, valid)
    return family


def model_for(data: TaskData, config: Config) -> nn.Module:
    """The model of a task sized by a config: of the config's family, else of the task's (``data.family``).

    Raises:
        RlhpoError: for a family that does not take the task's modality, naming those that do.
    """
    family = model_family(data, config)
    return build_model(
        family,
        input_shape=data.input_shape,
        n_classes=data.n_classes,
        vocab_size=data.vocab_size,
        num_layers=config.num_layers,
        units=config.units,
        dropout=config.dropout,
        train_tokens=data.x_train if family == "bow" else None,
    )


def _check_shape(family: str, shape: tuple[int, ...], ndim: int, what: str) -> None:
    if len(shape) != ndim:
        raise RlhpoError(f"Family {family!r} takes {what} per example, but got input shape {shape}.")


class ConvNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for _ in range(num_layers):
            blocks += [nn.Conv2d(channels, units, 3, padding=1, bias=False), nn.BatchNorm2d(units), nn.ReLU()]
            if min(height, width) >= 2:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = units
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(units, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self, n_inputs: int, n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(num_layers):
            layers += [nn.Linear(n_inputs if i == 0 else units, units), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(units, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (N, L, D) over the positions where ``mask`` (N, L) is true."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class RNNClassifier(nn.Module):
    def __init__(self, cell: str, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        rnn_type = nn.GRU if cell == "gru" else nn.LSTM
        self.embed = nn.Embedding(vocab_size, units, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        # Dropout between stacked layers; torch warns when it is set on a single layer.
        self.rnn = rnn_type(units, units, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(units, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.dropout(self.embed(tokens)))
        return self.head(self.dropout(masked_mean(hidden, tokens != PAD_ID)))


def bigram_ids(tokens: torch.Tensor, vocab_size: int, buckets: int = BOW_BUCKETS) -> torch.Tensor:
    """Ids ``vocab_size + hash(a, b)`` of the bigrams of ``tokens`` (N, L): (N, L - 1), padding 0.

    A bigram is padding (0) when either of its tokens is; the others get bucket
    ``(a * BIGRAM_MULTIPLIER + b) mod buckets``, offset past the token ids.
    """
    first, second = tokens[:, :-1], tokens[:, 1:]
    ids = vocab_size + (first * BIGRAM_MULTIPLIER + second) % buckets
    return torch.where((first != PAD_ID) & (second != PAD_ID), ids, PAD_ID)


def bag_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The terms of ``bow``: token ids, then hashed bigram ids, of ``tokens`` (N, L): (N, 2L - 1), padding 0."""
    return torch.cat([tokens, bigram_ids(tokens, vocab_size)], dim=1)


def smooth_idf(train_tokens: torch.Tensor, vocab_size: int, chunk: int = 1024) -> torch.Tensor:
    """sklearn's smooth idf, ``ln((1 + n) / (1 + df)) + 1``, of every ``bow`` term over ``train_tokens``.

    Terms that occur in no training text, and padding, get 0.
    """
    n_terms = vocab_size + BOW_BUCKETS
    df = torch.zeros(n_terms, dtype=torch.float64)
    for start in range(0, len(train_tokens), chunk):
        bag = bag_ids(train_tokens[start : start + chunk].long().cpu(), vocab_size)
        rows = torch.arange(len(bag)).unsqueeze(1) * n_terms
        df += torch.bincount(torch.unique(bag + rows) % n_terms, minlength=n_terms).double()
    idf = torch.log((1 + len(train_tokens)) / (1 + df)) + 1
    idf[df == 0] = 0.0
    idf[PAD_ID] = 0.0
    return idf.float()


def term_counts(bag: torch.Tensor, n_terms: int) -> torch.Tensor:
    """How often each entry's term occurs in its own row of ``bag`` (N, M): (N, M) counts."""
    rows = torch.arange(len(bag), device=bag.device).unsqueeze(1) * n_terms
    _, inverse, counts = torch.unique(bag + rows, return_inverse=True, return_counts=True)
    return counts[inverse]


class BagOfNgrams(nn.Module):
    """The ``bow`` family: a TF-IDF vector of token and bigram terms, then an MLP (module docstring)."""

    def __init__(self, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float, idf: torch.Tensor):
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("idf", idf)
        # Only terms of the training tokens (idf > 0) can carry weight, so only they get a row:
        # ``row`` maps a term to its row, every other term to the padding row 0, which the bag
        # skips. The rows are drawn as a table of every term would be (the same RNG draws), so
        # the model is the one with the whole table; the small one only spares Adam the rows
        # that never train (most hash buckets on a small task: several times faster there).
        used = torch.nonzero(idf > 0).squeeze(1)
        row = torch.zeros(len(idf), dtype=torch.long)
        row[used] = torch.arange(1, len(used) + 1)
        self.register_buffer("row", row)
        whole = nn.EmbeddingBag(len(idf), units, mode="sum", padding_idx=PAD_ID).weight.detach()
        nn.init.normal_(whole, std=BOW_INIT_STD)
        table = torch.cat([torch.zeros(1, units), whole[used]])
        self.embed = nn.EmbeddingBag.from_pretrained(table, freeze=False, mode="sum", padding_idx=PAD_ID)
        self.bias = nn.Parameter(torch.zeros(units))
        layers: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        for _ in range(num_layers - 1):
            layers += [nn.Linear(units, units), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(units, n_classes))
        self.net = nn.Sequential(*layers)

    def tfidf(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The terms of ``tokens`` (N, L) and a weight per term entry, such that summing the weights
        of each term gives the text's L2-normalised TF-IDF vector: two (N, 2L - 1) tensors."""
        bag = bag_ids(tokens, self.vocab_size)
        tf = term_counts(bag, len(self.idf)).to(self.idf.dtype)
        value = (1 + tf.log()) * self.idf[bag]  # each entry carries its term's TF-IDF ...
        share = value / tf  # ... and a term with tf entries gets it once in the sum
        norm = (share * value).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)
        return bag, share / norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bag, weights = self.tfidf(tokens)
        return self.net(self.embed(self.row[bag], per_sample_weights=weights) + self.bias)


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, units, padding_idx=PAD_ID)
        self.branches = nn.ModuleList(
            nn.ModuleList(
                [nn.Conv1d(units, units, width)]
                + [nn.Conv1d(units, units, 3, padding=1) for _ in range(num_layers - 1)]
            )
            for width in TEXTCNN_WIDTHS
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(len(TEXTCNN_WIDTHS) * units, n_classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        embedded = self.embed(tokens).transpose(1, 2)  # (N, units, L)
        mask = (tokens != PAD_ID).unsqueeze(1).to(embedded.dtype)  # (N, 1, L)
        # (N, units, L + 4): zeros on the right, so that a window starts at every token.
        x = F.pad(embedded * mask, (0, max(TEXTCNN_WIDTHS) - 1))
        pooled = []
        for convs in self.branches:
            h = torch.relu(convs[0](x))[:, :, :length] * mask
            for conv in convs[1:]:
                h = torch.relu(conv(h)) * mask
            pooled.append(h.amax(dim=2))  # h >= 0 and padding is 0: the max over the real tokens
        return self.head(torch.cat(pooled, dim=1))


class BertClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, units: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(units, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens != PAD_ID
        hidden = self.encoder(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        return self.head(masked_mean(hidden, mask))


def _bert_classifier(
    seq_len: int, vocab_size: int, n_classes: int, num_layers: int, units: int, dropout: float
) -> nn.Module:
    from transformers import BertConfig, BertModel  # slow to import (~3 s): only when needed

    heads = max(1, units // 32)
    if units % heads:
        raise RlhpoError(f"A transformer needs units divisible by its {heads} heads (units // 32), but got {units=}.")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=units,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=2 * units,
        max_position_embeddings=seq_len,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=PAD_ID,
    )
    return BertClassifier(BertModel(config, add_pooling_layer=False), units, n_classes)
