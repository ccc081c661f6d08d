"""One exception type for everything a user can fix.

Library code raises :class:`FairVLMError` (or a subclass) with a message that says what
went wrong *and what to do about it*. In notebooks and on the command line these errors
are shown as one line, not as a deep traceback (see :func:`install_short_tracebacks`).
"""

from __future__ import annotations


class FairVLMError(Exception):
    """An error caused by input the user can fix (a name, a path, a parameter)."""


class UnknownNameError(FairVLMError, KeyError):
    """A model, dataset or option name that is not one of the known ones."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(FairVLMError):
    """A missing, truncated or altered data file."""


class ParameterError(FairVLMError, ValueError):
    """A parameter with a value the library cannot use (re-exported by :mod:`fairvlm.params`)."""


def unknown(kind: str, name: object, known) -> UnknownNameError:
    """Build the standard 'unknown X' error listing the valid choices."""
    choices = ", ".join(sorted(map(str, known)))
    return UnknownNameError(f"unknown {kind} {name!r}; choose one of: {choices}")


def install_short_tracebacks() -> None:
    """In IPython, show :class:`FairVLMError` as one clear line instead of a traceback.

    Called by :func:`fairvlm.params.check_params`, so every chapter gets it. Other
    exceptions keep their full traceback: those are bugs, and the stack helps.
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return
    ip = get_ipython()
    if ip is None:
        return

    def _handler(shell, etype, evalue, tb, tb_offset=None):
        # a one-line "traceback": the kernel still reports the cell as failed
        # (papermill stops there), but the reader sees only what to fix
        stb = [f"{etype.__name__}: {evalue}"]
        shell._showtraceback(etype, evalue, stb)
        return stb

    ip.set_custom_exc((FairVLMError,), _handler)


#: The exit status of every fairvlm command line for input the user can fix.
EXIT_BAD_INPUT = 2


def argument_parser(**kwargs):
    """An :class:`argparse.ArgumentParser` whose refusals (an unknown option, a missing or
    malformed argument) raise :class:`ParameterError` instead of printing the usage and
    exiting: under :func:`cli_main` they end as one ``error:`` line and exit status 2, like
    every other bad input. ``--help`` still prints the usage."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ParameterError(f"{self.prog}: {message} (see {self.prog} --help)")

    return _Parser(**kwargs)


def cli_main(main, argv=None) -> int:
    """Run a command line's ``main(argv)`` and turn a :class:`FairVLMError` into one line.

    The data, bookbuild and testbed command lines all end the same way: the error's message
    on stderr as ``error: ...`` and exit status :data:`EXIT_BAD_INPUT` (2, as argparse uses
    for a bad option). Any other exception keeps its traceback: that is a bug. Returns the
    exit status (``main``'s own, or 2), for ``sys.exit``.
    """
    import sys

    if not callable(main) or isinstance(main, str):
        raise ParameterError(f"main={main!r} is not valid: it must be the command's main(argv) function")
    try:
        status = main(argv)
    except FairVLMError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return 0 if status is None else int(status)
