"""tests/conftest.py's guard: a failure whose traceback has an entry without a line number (CPython 3.11+:
``tb_lineno`` None for an instruction with no line) is reported, not turned into a pytest INTERNALERROR that
ends the session unnamed (session 33's cc4)."""

from __future__ import annotations

import sys
import types

from _pytest._code.code import ExceptionInfo


def _lineless_failure() -> BaseException:
    here = sys._getframe()
    try:
        raise ValueError("the error the report must show")
    except ValueError as e:
        # the entry placed at one of this code's compiler-made instructions (an except clause's cleanup):
        # CPython has no line for them
        lasti = next(2 * i for i, pos in enumerate(here.f_code.co_positions()) if pos[0] is None)
        lineless = types.TracebackType(e.__traceback__, here, lasti, -1)
        assert lineless.tb_lineno is None  # (what CPython gives such an entry: the case under test)
        return e.with_traceback(lineless)


def test_a_lineless_traceback_entry_is_reported_with_its_error() -> None:
    info = ExceptionInfo.from_exception(_lineless_failure())
    for style in ("long", "short", "line", "native"):
        text = str(info.getrepr(style=style))
        assert "the error the report must show" in text, style
    # the entry is placed at its function's first line (0-based in pytest)
    assert info.traceback[0].lineno == _lineless_failure.__code__.co_firstlineno - 1


def test_a_frame_without_a_line_number_reads_its_first_line() -> None:
    from _pytest._code.code import Frame

    class _Lineless:  # (a frame whose f_lineno is None, as CPython gives for a lineless instruction)
        f_lineno = None
        f_code = _lineless_failure.__code__

    assert Frame(_Lineless()).lineno == _lineless_failure.__code__.co_firstlineno - 1  # type: ignore[arg-type]
