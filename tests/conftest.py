"""Session-wide test setup shared by the unit and end-to-end suites.

Hypothesis's pytest plugin imports ``hypothesis`` in ``pytest_terminal_summary``
when no test module has imported it yet (a run that selects no property test).
That late import goes through pytest's assertion rewriting, i.e. ``ast.parse``;
if garbage collection then runs a finaliser that reports an unraisable
exception (the evaluator pool tests can leave a subprocess transport whose
``__del__`` fires after its loop closed), pytest's unraisable hook parses
source re-entrantly and CPython 3.11 aborts the session with ``SystemError:
AST constructor recursion depth mismatch``. Importing hypothesis here, before
any test runs, leaves no import for the end of the session.

Property tests have no deadline: a test asserts behaviour, not speed, and on a
busy two-core machine (builds, other tests' subprocesses) Hypothesis's default
200 ms per example fails correct code.
"""

import hypothesis

hypothesis.settings.register_profile("jaas", deadline=None)
hypothesis.settings.load_profile("jaas")
