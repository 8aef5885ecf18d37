"""The package's errors: every failure a user can meet has a class here and a message that says what to do.

Each class is also a subclass of the builtin it refines (``ValueError`` for bad input, ``RuntimeError`` for
a computation that failed), so callers may catch either.  The workflow's scripts catch
:class:`AllianceMetaError` and print its message alone: it names the file, model or config key, what
failed and what to try, so no traceback is needed.
"""

from __future__ import annotations


class AllianceMetaError(Exception):
    """Base class of the package's expected failures; ``str(error)`` is the complete message for the user."""


class InputError(AllianceMetaError, ValueError):
    """A problem with an input file: the message names file, line, column, value and expectation."""


class ConfigError(AllianceMetaError, ValueError):
    """The configuration does not satisfy the schema: the message names the key."""


class ModelError(AllianceMetaError, ValueError):
    """A model cannot be fitted to these data (too few effects, a constant moderator, collinear terms)."""


class ConvergenceError(AllianceMetaError, RuntimeError):
    """An iterative estimator did not converge; the message names the model and what to try instead."""


class SamplingError(AllianceMetaError, RuntimeError):
    """MCMC did not converge after the retry; the message gives the failing diagnostics and what to try."""
