"""Task meta-features, computed without training (filled in by the tasks work)."""

from __future__ import annotations

# The fixed order of the meta-feature vector the environment observes; each lies in [0, 1].
META_FEATURES = (
    "modality_image",
    "modality_text",
    "modality_tabular",
    "family_cnn",
    "family_mlp",
    "family_gru",
    "family_lstm",
    "family_transformer",
    "log_n_train",  # log10(n_train) / 5
    "log_n_classes",  # log2(n_classes) / 7
    "class_entropy",  # entropy of the training labels / log(n_classes)
    "log_input_size",  # log10(prod(input_shape)) / 4: pixels*channels, sequence length or features
    "log_vocab_size",  # log10(vocab_size + 1) / 5; 0 for non-text
)
