"""The retry plan of an order whose products were busy: never wait for an unproven product while holding others."""

from __future__ import annotations

import random

from orders_service.orders.wait_plan import WaitPlan


def test_a_product_found_busy_is_first_waited_for_alone() -> None:
    plan = WaitPlan([1])
    assert plan.after_busy([2, 3]) == [2]
    assert plan.after_busy([3]) == [3]  # 1 and 2 were got, 3 was not yet: alone, holding nothing


def test_products_are_waited_for_together_only_once_each_was_got_alone() -> None:
    plan = WaitPlan([1])
    assert plan.after_busy([3]) == [3]
    assert plan.after_busy([1]) == [1, 3]  # both got before: in id order, together


def test_a_product_not_yet_got_is_waited_for_alone_however_many_were_got_before() -> None:
    """A product held for long elsewhere is one no try got: waited for alone, it ends that request only."""
    plan = WaitPlan([2])
    assert plan.after_busy([4]) == [4]
    assert plan.after_busy([2]) == [2, 4]
    assert plan.after_busy([5]) == [5]


def test_products_taken_by_turns_end_in_a_try_that_waits_for_all_of_them() -> None:
    """Whatever the busy products each try finds, every try gets the rows it waits for: the tries end, in at most
    about twice as many as the order has products, and none waits for several before each was got alone."""
    products = list(range(1, 7))
    for seed in range(200):
        rng = random.Random(seed)
        plan = WaitPlan([rng.choice(products)])
        got: set[int] = set()
        tries = 1
        while True:
            got.update(plan.wait_for)
            free = [p for p in products if p not in plan.wait_for]
            busy = sorted(rng.sample(free, rng.randint(0, len(free))))
            if not busy:
                break
            wait_for = plan.after_busy(busy)
            tries += 1
            assert len(wait_for) == 1 or set(wait_for) <= got
        assert tries <= 2 * len(products) + 1
