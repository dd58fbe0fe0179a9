"""The order rules that need no database: line combining and the reasons an order is rejected."""

from __future__ import annotations

from orders_service.orders.schemas import OrderLine
from orders_service.orders.service import combine_lines, rejection
from orders_service.orders.store import Placement


def test_combine_lines_sums_duplicates_and_sorts_by_product_id() -> None:
    lines = [OrderLine(3, 1), OrderLine(1, 2), OrderLine(3, 4)]
    assert combine_lines(lines) == {1: 2, 3: 5}
    assert list(combine_lines(lines)) == [1, 3]


def test_unknown_products_win_over_missing_stock() -> None:
    rejected = rejection(Placement("missing", missing=[9, 7], short=[1]), {1: 1, 7: 1, 9: 2})
    assert rejected.reason == "missing_product"
    assert rejected.product_ids == [7, 9]
    assert rejected.detail == "unknown product id(s): 7, 9"


def test_every_short_product_is_reported() -> None:
    rejected = rejection(Placement("short", short=[2, 1], total_cents=10), {1: 4, 2: 2, 3: 9})
    assert rejected.reason == "insufficient_stock"
    assert rejected.product_ids == [1, 2]


def test_a_total_beyond_bigint_names_every_product() -> None:
    rejected = rejection(Placement("too_large", total_cents=2**63), {1: 4, 2: 2})
    assert rejected.reason == "total_too_large"
    assert rejected.product_ids == [1, 2]
