"""The errors a user's input or a sweep's situation can cause, in one place.

Rooms raise them with a message written for the user (naming the file, field or option at fault);
the CLI maps them to exit codes and prints the message without a traceback: every ``UserError``
exits 2. ``SpecError`` (sweep/spec.py, a bad spec file) is mapped the same way. This module is in
the bottom room so every room may raise them; it imports nothing of the project.
"""
from __future__ import annotations


class UserError(Exception):
    """Refused before anything ran, for a reason the user can fix; the message says which (exit 2)."""


class LayoutError(UserError, ValueError):
    """A sweep directory that would land outside its results dir, or a sweep name that names no sweep."""


class SpecChanged(UserError, RuntimeError):
    """The spec differs from the one stored in the sweep folder (run/record.py)."""


class LockHeld(UserError, RuntimeError):
    """Another driver holds the sweep (run/lock.py); the message names it and what to do."""


class LockLost(RuntimeError):
    """This driver's lock was taken over (it was suspended past its lease): it must not write.
    Not a user mistake: the driver that finds it leaves with exit 1 (run/lock.py)."""


class SweepError(UserError, RuntimeError):
    """The sweep cannot start (bad resources, unreachable services, above the size guard)."""


class GpuUnavailable(SweepError):
    """Trials ask for GPUs that this cluster does not have and cannot get."""


class DoesNotFit(UserError):
    """A trial is estimated not to fit in the memory of the machine that would run it (run/memory.py)."""


class AddressError(UserError, ValueError):
    """The --address is malformed or nothing Ray-like answers there."""


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be used."""


class EvalError(UserError, ValueError):
    """`fpr-sweep eval` cannot start (bad sizes or protocols, no saved models, bad options)."""


class UiError(UserError, RuntimeError):
    """`fpr-sweep ui` has no store to serve, or its port is taken."""
