"""Expected failures: a missing model, a bad config or calibration. Each says in one line what
is wrong and what to do; `aedr` prints it as `aedr: error: …` and exits 2, never with a
traceback. Kept in a module that imports nothing, so the command can catch them before any
heavy import (torch) has happened."""


class AedrError(Exception):
    """A failure the user can fix; `str()` is one line. `aedr` exits with `exit_status`."""

    exit_status = 2


class ServiceUnavailable(AedrError):
    """A service the command needs (the database, the broker) cannot be reached at start."""

    exit_status = 3
