"""Project exceptions. Library code raises these; the CLI turns them into one-line errors."""


class VlsearchError(Exception):
    """Base class for every error vlsearch reports to a user."""


class DecodeError(VlsearchError):
    """A file could not be decoded as an image; the message says why in a few words."""


class CheckpointError(VlsearchError):
    """A model checkpoint is missing, unreadable, unsafe or of an unknown version."""


class ConfigError(VlsearchError):
    """An option has a value the model or the trainer cannot use (e.g. an unknown backbone)."""


class CaptionsError(VlsearchError):
    """A captions file is in an unknown format, malformed, or names no existing image."""


class IndexStoreError(VlsearchError):
    """An index is missing, incompatible with the model, or locked by another process."""


class IndexLockedError(IndexStoreError):
    """Another process is updating this index."""


class ModelMismatchError(IndexStoreError):
    """The index was built with another model than the one given."""


class QueryError(VlsearchError):
    """A query is empty or otherwise cannot be answered."""


class RayError(VlsearchError):
    """Ray is missing, the cluster cannot be reached, or no worker could run."""
