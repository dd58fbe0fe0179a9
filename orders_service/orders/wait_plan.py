"""Which product rows the next try of an order (or a cancellation) waits for, after a try found some busy.

A try waits for the rows it is told to and locks the others with ``SKIP LOCKED``; if any was
held elsewhere, it writes nothing and names them (``busy``). Waiting for a row while holding
another is hold-and-wait: a product held for long elsewhere (a catalog job) would then stall
every order for the products held by the waiting order. So a product is waited for together
with others only once a try has waited for it alone and got it (it is *proven* to be held
briefly); a product not yet proven is waited for alone, holding nothing, and a long hold ends
that request only (``lock_timeout``).

The proven set only grows and a try that waits for all of an order's busy products gets them,
so an order whose products keep being taken by turns (short holds under contention) gets
through in at most about twice as many tries as it has products.
"""

from __future__ import annotations


class WaitPlan:
    __slots__ = ("_proven", "wait_for")

    def __init__(self, first: list[int]) -> None:
        """``first``: what the first try waits for (one product, or none)."""
        self.wait_for = first
        self._proven: set[int] = set()

    def after_busy(self, busy: list[int]) -> list[int]:
        """The next try's ``wait_for``, given the products the last try found busy (and it wrote nothing)."""
        self._proven.update(self.wait_for)  # the last try got every row it waited for
        unproven = [product_id for product_id in busy if product_id not in self._proven]
        self.wait_for = unproven[:1] if unproven else sorted(self._proven.union(busy))
        return self.wait_for
