"""The roles' rate-limit check (module_utils/rate_limits.py; the test llm_rate_limit) takes exactly what the backend
takes (its parse_rate, on the limits library): compared on written cases and on a generated corpus of near-valid
strings."""
from __future__ import annotations

import random

import pytest
from ansible_collections.llm_endpoints.core.plugins.module_utils.rate_limits import is_rate_limit as rate_limit
from gateway import settings as gw_settings


def backend_takes(text: str) -> bool:
    try:
        gw_settings.parse_rate("rate", text)
    except gw_settings.ConfigError:
        return False
    return True


WRITTEN = {
    "60/minute": True, "10/second;500/hour": True, "100 per 5 minutes": True, "60 per minute": True,
    "1/3 SECONDS": True, "5/hours|6/days,7/months": True, "1/yEaRs": True, " 1/second ": True, "1persecond": True,
    "0/minute": False, "1/fortnight": False, "lots": False, "": False, "1/second;": False, ";1/second": False,
    "1 / 2 / minute": False, "-1/second": False, "1//second": False, "1/second ; 0/minute": False,
}


@pytest.mark.parametrize(("text", "taken"), WRITTEN.items(), ids=list(WRITTEN))
def test_written_cases_are_judged_as_the_backend_judges_them(text: str, taken: bool) -> None:
    assert backend_takes(text) is taken
    assert rate_limit(text) is taken


def near_valid(rng: random.Random) -> str:
    """A rate limit of 1-3 parts, each part sometimes damaged: amounts (0 too), '/' or 'per', a multiple, units in
    any case, plural or not, misspelt, separators, spaces, stray characters."""
    units = ["second", "minute", "hour", "day", "month", "year"]
    parts = []
    for _ in range(rng.randint(1, 3)):
        damaged = rng.random() < 0.25
        amount = rng.choice(["0", "-1", "x", ""] if damaged and rng.random() < 0.3 else ["1", "7", "60", "1000"])
        per = rng.choice(["//", " ", "", "per per"] if damaged and rng.random() < 0.3 else ["/", " per ", "per", " / "])
        multiple = rng.choice(["", "", "2", " 5 ", "0"])
        unit = rng.choice(["week", "sec", "fortnight", rng.choice(units) + "ss"] if damaged and rng.random() < 0.4
                          else units)
        unit = rng.choice([unit, unit + "s", unit.upper(), unit.title()])
        parts.append(rng.choice(["", " "]) + amount + per + multiple + unit + rng.choice(["", " ", ":"]))
    text = rng.choice([";", ",", "|", "; ", ";;", ":;"] if rng.random() < 0.1 else [";", ",", "|", "; "]).join(parts)
    return text + rng.choice(["", "", "", " ", ";", "x"])


def test_a_generated_corpus_is_judged_as_the_backend_judges_it() -> None:
    rng = random.Random(20261207)
    corpus = [near_valid(rng) for _ in range(4000)]
    taken = [text for text in corpus if backend_takes(text)]
    # The corpus has both kinds in number, or it would prove little.
    assert 400 < len(taken) < 3600, len(taken)
    assert [text for text in corpus if rate_limit(text) != backend_takes(text)] == []


def test_what_an_env_file_cannot_hold_is_refused_though_the_backend_would_take_it() -> None:
    for text in ("60/minute\n", "60/minute\nLLM_BACKEND_API_KEY=x", "\t60/minute", "1/second;" * 40 + "1/second"):
        assert not rate_limit(text)
    assert backend_takes("60/minute\n") and backend_takes("1/second;" * 40 + "1/second")
    assert not rate_limit(60) and not rate_limit(None)
