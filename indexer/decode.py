"""The decoder lives in :mod:`retrieval.decode` (training, evaluation, indexing and search share it);
this name is kept so that ``from indexer.decode import Decoder`` goes on working."""
from retrieval.decode import Decoded, DecodeError, Decoder, ImageInfo, load_rgb, probe, to_rgb

__all__ = ["Decoded", "DecodeError", "Decoder", "ImageInfo", "load_rgb", "probe", "to_rgb"]
