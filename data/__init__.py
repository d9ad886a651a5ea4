"""Shipped artifacts: the default model checkpoint and its test metrics (installed as ``vlsearch_data``)."""
