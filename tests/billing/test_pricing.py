"""Each pricing model with worked examples."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from billing.pricing import PriceSpec, parse_tiers, price, round_money
from tenants.errors import ValidationFailed

TIERS = parse_tiers(
    [
        {"up_to": "100", "unit_price": "1.00"},
        {"up_to": "200", "unit_price": "0.80"},
        {"up_to": None, "unit_price": "0.50"},
    ]
)


def test_per_unit():
    amount, _ = price(PriceSpec("per_unit", unit_price=D("0.023")), D("1000"))
    assert amount == D("23.000")


def test_graduated_vs_volume_on_the_same_quantity():
    # 250 units: graduated = 100 x 1.00 + 100 x 0.80 + 50 x 0.50 = 205.00
    graduated, breakdown = price(PriceSpec("graduated", tiers=TIERS), D(250))
    assert graduated == D("205.00")
    assert [b["quantity"] for b in breakdown] == ["100", "100", "50"]
    # volume = all 250 at the tier 250 falls in (0.50) = 125.00
    volume, _ = price(PriceSpec("volume", tiers=TIERS), D(250))
    assert volume == D("125.00")
    # 150 units: volume at 0.80 = 120; graduated 100 + 40 = 140
    assert price(PriceSpec("volume", tiers=TIERS), D(150))[0] == D("120.00")
    assert price(PriceSpec("graduated", tiers=TIERS), D(150))[0] == D("140.00")


def test_flat_fees_apply_once_a_tier_is_reached():
    tiers = parse_tiers(
        [
            {"up_to": "10", "unit_price": "0", "flat_fee": "5"},
            {"up_to": None, "unit_price": "1", "flat_fee": "2"},
        ]
    )
    assert price(PriceSpec("graduated", tiers=tiers), D(4))[0] == D(5)
    assert price(PriceSpec("graduated", tiers=tiers), D(12))[0] == D(5) + D(2) + D(2)
    assert price(PriceSpec("volume", tiers=tiers), D(12))[0] == D(12) + D(2)


def test_package_rounds_up_to_whole_packages():
    spec = PriceSpec("package", package_size=D(1000), package_price=D("2.50"))
    assert price(spec, D(1))[0] == D("2.50")
    assert price(spec, D(1000))[0] == D("2.50")
    assert price(spec, D(1001))[0] == D("5.00")
    assert price(spec, D(0))[0] == D(0)


def test_included_allowance_is_free():
    spec = PriceSpec("per_unit", unit_price=D("0.09"), included=D(100))
    assert price(spec, D(80))[0] == D(0)
    assert price(spec, D(150))[0] == D("4.50")
    graduated = PriceSpec("graduated", tiers=TIERS, included=D(50))
    assert price(graduated, D(250))[0] == D("100") + D("80") + D("0")


def test_proration_scales_allowance_and_tier_bounds():
    spec = PriceSpec("graduated", tiers=TIERS, included=D(10))
    # half a month: 5 included, tiers at 50 / 100
    amount, _ = price(spec, D(105), scale=D("0.5"))
    assert amount == D(50) * D("1.00") + D(50) * D("0.80")


def test_round_money_half_up_once():
    assert round_money(D("0.005")) == D("0.01")
    assert round_money(D("0.0049999")) == D("0.00")
    assert round_money(D("12.345")) == D("12.35")


@pytest.mark.parametrize(
    "tiers",
    [
        [{"up_to": "10", "unit_price": "1"}],  # last not open
        [
            {"up_to": "10", "unit_price": "1"},
            {"up_to": "5", "unit_price": "1"},
            {"up_to": None, "unit_price": "1"},
        ],
        [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
        [{"up_to": "x", "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
        [{"up_to": None, "unit_price": "-1"}],
    ],
)
def test_bad_tiers_are_refused(tiers):
    with pytest.raises(ValidationFailed):
        parse_tiers(tiers)
