"""Exceptions raised by esegeta_monai.

Every error a user can cause derives from :class:`EsegetaError`; its message names the
offending file, key or value and says how to fix it, so the CLI can print it without a
stack trace.

Example:
    >>> from esegeta_monai.errors import InputError
    >>> str(InputError("scan.nii.gz: 4 spatial dimensions, expected 3"))
    'scan.nii.gz: 4 spatial dimensions, expected 3'
"""


class EsegetaError(Exception):
    """Base class of every user-facing error."""


class InputError(EsegetaError, ValueError):
    """An image (file or tensor) that cannot be explained: missing, corrupt, wrong shape, NaN."""


class BundleError(EsegetaError):
    """A MONAI bundle that cannot be read: missing key, bad config, missing or mismatched weights."""


class MethodError(EsegetaError, ValueError):
    """An unknown method, or a method keyword/value it does not accept."""


class TargetError(EsegetaError, ValueError):
    """An unknown or malformed target specification."""


class ConfigError(EsegetaError, ValueError):
    """An invalid run configuration (names the key and the allowed values)."""


class OutputError(EsegetaError, OSError):
    """An output folder or file that cannot be written."""


class MethodTimeout(EsegetaError, TimeoutError):
    """A method ran past its time budget."""


class EmptyTargetError(TargetError):
    """A target whose region is empty on this image (e.g. no voxel predicted as the class): its
    map would be all zeros and say nothing, so none is computed."""
