"""llm_endpoints.core.input_checks (plugins/action/input_checks.py): rows judged in order, the first failing row's
message, `when`, the shared message of a number row, rows kept in a variable ({table: <variable>}, the decimal rows
here), and an expression that cannot be evaluated named without its error text. One run, one local host per case."""
from __future__ import annotations

import pytest
from llm_fixture import Cases, run_cases

GOOD = {"items": [1, 2], "count": 3, "secret": "abc", "check_secret": True, "timeout": 2.5, "share": 0}
CASES = {
    "good": ({}, "6 checks passed"),
    # The second row would raise on a string: the first fails, and the second is never evaluated.
    "string": ({"items": "x"}, 'items must be a list; got "x".'),
    "sum": ({"items": [60, 50]}, "items must add up to less than 100; got 110."),
    "zero": ({"count": 0}, "count must be a whole number from 1 to 5; got 0."),
    "text": ({"count": "3x"}, 'count must be a whole number from 1 to 5; got "3x".'),
    "bool": ({"count": True}, "count must be a whole number from 1 to 5; got true."),
    "secret": ({"secret": "Hunter-2-SECRET"}, "secret must be lower-case letters (its value is not shown)."),
    "skipped": ({"secret": "Hunter-2-SECRET", "check_secret": False}, "5 checks passed"),
    # A decimal row with an exclusive minimum and a unit; a decimal row from 0 (its minimum allowed).
    "at-minimum": ({"timeout": 0}, "timeout must be a number of seconds greater than 0 and at most 60; got 0."),
    "past-maximum": ({"timeout": 60.5}, "timeout must be a number of seconds greater than 0 and at most 60; got 60.5."),
    "nan": ({"timeout": "nan"}, 'timeout must be a number of seconds greater than 0 and at most 60; got "nan".'),
    "exponent": ({"timeout": "1e1"}, 'timeout must be a number of seconds greater than 0 and at most 60; got "1e1".'),
    "negative": ({"share": -0.5}, "share must be a number from 0 to 1; got -0.5."),
    "decimal-where-whole": ({"count": 2.5}, "count must be a whole number from 1 to 5; got 2.5."),
    # A {table: <variable>} row that names no variable, or one that holds no list of rows.
    "table-missing": ({}, "input_checks: table no_such_rows is not defined"),
    "table-not-list": ({}, "input_checks: table secret must be a list of rows"),
    "raises": ({"items": [1, "Hunter-2-SECRET"]},
               "input_checks: the check of row 1 could not be evaluated (AnsibleTemplate"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    work = tmp_path_factory.mktemp("input-checks")
    return run_cases(work, "input_checks.yml", {name: {**GOOD, **extra} for name, (extra, _) in CASES.items()})


@pytest.mark.parametrize("case", list(CASES))
def test_a_row_fails_with_its_own_message_or_the_table_passes(runs: Cases, case: str) -> None:
    message = CASES[case][1]
    output = runs.hosts[case]
    assert (case in runs.failed) == ("checks passed" not in message), output[-2000:]
    assert message in output, output[-2000:]


def test_no_value_of_a_secret_row_or_an_expression_that_raised_is_shown(runs: Cases) -> None:
    assert "Hunter-2-SECRET" not in runs.output.replace('"secret": "Hunter-2-SECRET"', "")

