"""s26-rev-fixqa26b F3: ``flowControl`` limits as Kubernetes quantities (740e4700, flowcontrol/config.py:174).

GIE's ``maxBytes`` / ``maxRequests`` are ``resource.Quantity`` (apimachinery's grammar:
``<number> ::= <digits> | <digits>.<digits> | <digits>. | .<digits>``, ``<suffix> ::=
<binarySI> | <decimalSI> | <decimalExponent>``, ``<decimalExponent> ::= "e" <signedNumber> | "E"
<signedNumber>``, decimalSI
includes ``m``). Every such quantity that is a whole number >= 0 once scaled must load with that value (the
commit's own rule refuses only non-whole values). Fuzzed with hypothesis: ``1e3``, ``.5k``, ``5.``,
``2000m``, ``+1`` are valid upstream and refused here."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.flowcontrol.config import parse_flow_control

BIN = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
DEC = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
digits = st.text("0123456789", min_size=1, max_size=4)


@st.composite
def quantity(draw: st.DrawFn) -> tuple[str, Fraction]:
    form = draw(st.sampled_from(["int", "frac", "trail", "lead"]))
    a, b = draw(digits), draw(digits)
    num = {"int": a, "frac": f"{a}.{b}", "trail": f"{a}.", "lead": f".{b}"}[form]
    val = Fraction(num.rstrip(".") if form == "trail" else num)
    sign = draw(st.sampled_from(["", "+"]))
    kind = draw(st.sampled_from(["bin", "dec", "exp"]))
    if kind == "bin":
        suf = draw(st.sampled_from(sorted(BIN)))
        val *= BIN[suf]
    elif kind == "dec":
        suf = draw(st.sampled_from(sorted(DEC)))
        val *= DEC[suf]
    else:
        e = draw(st.integers(0, 6))
        suf = draw(st.sampled_from(["e", "E"])) + str(e)
        val *= 10**e
    return sign + num + suf, val


@settings(max_examples=300, deadline=None)
@given(quantity())
def test_whole_kubernetes_quantities_load_with_their_value(q: tuple[str, Fraction]) -> None:
    text, val = q
    if val.denominator != 1:
        return  # (refused by design: not whole)
    assert parse_flow_control({"maxBytes": text}).max_bytes == int(val), text
