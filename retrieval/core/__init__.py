"""The model core, the bottom layer: decode and prepare images, tokenize, encode (CNN and GRU into one space),
train, evaluate, save and load checkpoints, and the project's errors. It knows nothing of indexes: ``indexer``
and ``retrieval.app`` import it, never the other way (tests/test_layers.py holds the contract)."""
