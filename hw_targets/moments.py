"""Exact running sums of per-sample values, so that ``energy`` goes batch by batch (docs/semantics.md, 'Energy counts').

A finite float64 is an integer times a power of two, so the sum of a report's per-sample values
(event counts, and the energies they are priced at) and the sum of their squares are kept as Python
integers in the finest unit seen so far. They are exact whatever the batches: the mean and the
population standard deviation are rounded once, at the end, and do not depend on the batch size;
memory holds one batch, not every sample. A non-finite value (a profile's unknown figure) makes the
mean what NumPy's would be (inf, -inf or nan) and the standard deviation nan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass
class Moments:
    """Count, sum and sum of squares of the values added so far (exact), and the non-finite ones' float sum."""

    count: int = 0
    total: int = 0  # sum of the finite values, in units of 2**-exponent
    squares: int = 0  # sum of their squares, in units of 2**-(2 * exponent)
    exponent: int = 0
    nonfinite: float = 0.0  # sum of the values that are inf or nan (0.0: none)

    def add(self, values: np.ndarray) -> None:
        """Add one batch's per-sample values."""
        items = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
        for value in items:
            if not math.isfinite(value):
                self.nonfinite += value
                continue
            numerator, denominator = value.as_integer_ratio()  # denominator: a power of two
            exponent = denominator.bit_length() - 1
            if exponent > self.exponent:  # a finer unit: rescale what is held
                self.total <<= exponent - self.exponent
                self.squares <<= 2 * (exponent - self.exponent)
                self.exponent = exponent
            units = numerator << (self.exponent - exponent)
            self.total += units
            self.squares += units * units
        self.count += len(items)

    @property
    def mean(self) -> float:
        """The mean, rounded once (nan with no values)."""
        if not self.count:
            return math.nan
        if self.nonfinite != 0.0:  # an inf, or a nan (never equal to 0.0)
            return self.nonfinite
        return float(Fraction(self.total, self.count << self.exponent))

    @property
    def std(self) -> float:
        """The population standard deviation, rounded once (nan with no values or a non-finite one)."""
        if not self.count or self.nonfinite != 0.0:
            return math.nan
        # variance = spread / (count * 2**exponent)**2, with spread = count * squares - total**2 >= 0 exactly
        spread = self.count * self.squares - self.total * self.total
        extra = max(0, 64 - spread.bit_length() // 2)  # 64 more bits than a float64 keeps, before its one rounding
        root = math.isqrt(spread << (2 * extra))
        return float(Fraction(root, self.count << (self.exponent + extra)))
