"""The errors dp-spark raises, and the exit status each one means.

Every error a user can act on derives from ``DPSparkError`` and reads as one
line naming the key, column, value or location at fault, never the content
of a row (input text is private). The command line maps them to exit
statuses:

    2  ConfigError, InputError: bad configuration or bad input
    3  PrivacyRefusal: refused by the privacy ledger or a guarantee check
    1  anything else (DPRuntimeError and unexpected failures)
"""

from __future__ import annotations


class DPSparkError(Exception):
    """Base of every error dp-spark raises on purpose."""

    exit_code = 1


class ConfigError(DPSparkError, ValueError):
    """A configuration key, command-line flag or parameter is missing, unknown or invalid."""

    exit_code = 2


class InputError(DPSparkError, ValueError):
    """The input table does not fit the configuration: a missing or mistyped
    column, a duplicate or null row key, a malformed record, an unreadable
    location, an output that would overwrite the input."""

    exit_code = 2


class PrivacyRefusal(DPSparkError):
    """The run would release more than it may: the ledger refuses a
    recomposition, a column's mechanism promises no guarantee and the config
    does not accept that, or the auditor refutes a booked guarantee."""

    exit_code = 3


class DPRuntimeError(DPSparkError):
    """The run failed for a reason that is neither the config nor the input
    (a filesystem that refuses a write, a lost lock, a failed Spark job)."""

    exit_code = 1


def exit_code(error: BaseException) -> int:
    return error.exit_code if isinstance(error, DPSparkError) else 1
