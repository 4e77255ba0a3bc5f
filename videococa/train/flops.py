"""FLOPs counted from the traced program, scans included: the numerator of MFU and HFU.

XLA's `compiled.cost_analysis()` counts the body of a `while` loop once, so a `scan` over 12 layers
(or over vocabulary chunks) reports a twelfth of its FLOPs. Here the jaxpr of a function is walked
instead and every sub-program is multiplied by how often it runs: a `scan` body by its length, a
`cond` by its most expensive branch, a rematerialised block once per use (the backward pass of a
`remat` block holds its recomputation explicitly). Shapes come from tracing the model with its
config, so every variant, pooler and tower is counted as it is built, nothing is hand-derived.

Counts (FLOPs, one multiply-add = 2):
  matmul          `dot_general` and convolutions: 2 * output elements * contracted size.
  elementwise     arithmetic on every output element (add, mul, max, select, comparisons, ...)
                  and reductions (per input element): roughly what XLA counts besides matmuls.
  transcendental  exp, log, tanh, erf, rsqrt, ... per element (XLA reports them separately).

Utilisation (`Trainer.flops`): MFU's numerator is the *model* FLOPs of a training step, 3x the
matmul FLOPs of the forward loss (forward + backward, weight and input gradients), whatever is
recomputed or frozen, as MaxText and PaLM define it; HFU's is the matmul FLOPs of the traced step,
which includes rematerialisation. Elementwise work is excluded from both.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core

# One FLOP per output element.
_ELEMENTWISE = frozenset((
    "add", "add_any", "sub", "mul", "div", "rem", "neg", "max", "min", "abs", "sign", "square",
    "select_n", "clamp", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not",
    "floor", "ceil", "round", "nextafter", "is_finite", "convert_element_type"))
# One FLOP per input element.
_REDUCTIONS = frozenset(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
                         "argmin", "cumsum", "cummax", "cumlogsumexp"))
_TRANSCENDENTAL = frozenset((
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "erf", "rsqrt", "sqrt", "cbrt", "pow", "sin",
    "cos", "tan", "atan2"))
# Functions XLA evaluates as polynomials: (elementwise FLOPs, transcendentals) per element, as its
# cost analysis counts them (erfc: the exact GELU's; logistic: the sigmoid's).
_EXPANDED = {"erfc": (60, 1), "erf_inv": (37, 2), "lgamma": (52, 4), "digamma": (52, 4),
             "logistic": (3, 1)}


@dataclasses.dataclass
class Counts:
  """FLOPs of a program by kind (see the module docstring)."""
  matmul: float = 0.0
  elementwise: float = 0.0
  transcendental: float = 0.0

  @property
  def total(self) -> float:
    """matmul + elementwise: comparable to XLA's 'flops' of an unrolled program."""
    return self.matmul + self.elementwise

  def __add__(self, other: "Counts") -> "Counts":
    return Counts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  def scaled(self, factor: float) -> "Counts":
    return Counts(*(factor * x for x in dataclasses.astuple(self)))


def _size(var) -> int:
  return math.prod(getattr(var.aval, "shape", ()))


def _dot_general_flops(eqn) -> float:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = math.prod(d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch))
  return 2.0 * math.prod(lhs) * rhs_free


def _conv_flops(eqn) -> float:
  kernel = eqn.invars[1].aval.shape
  out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2.0 * _size(eqn.outvars[0]) * math.prod(kernel) / out_features


def _sub_jaxprs(eqn) -> list[tuple[Any, float]]:
  """(sub-program, how often it runs) of an equation's parameters."""
  if eqn.primitive.name == "cond":
    return []  # Handled by the caller: the most expensive branch.
  found = []
  for value in eqn.params.values():
    for item in (value if isinstance(value, (list, tuple)) else (value,)):
      if isinstance(item, jax_core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, jax_core.Jaxpr):
        found.append(item)
  times = float(eqn.params["length"]) if eqn.primitive.name == "scan" else 1.0
  return [(jaxpr, times) for jaxpr in found]


def count_jaxpr(jaxpr) -> Counts:
  """FLOPs of a (closed) jaxpr, sub-programs included (a `while` body counted once)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  counts = Counts()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      counts.matmul += _dot_general_flops(eqn)
    elif name == "conv_general_dilated":
      counts.matmul += _conv_flops(eqn)
    elif name in _ELEMENTWISE:
      counts.elementwise += _size(eqn.outvars[0])
    elif name in _REDUCTIONS:
      counts.elementwise += _size(eqn.invars[0])
    elif name in _TRANSCENDENTAL:
      counts.transcendental += _size(eqn.outvars[0])
    elif name in _EXPANDED:
      elementwise, transcendental = _EXPANDED[name]
      counts.elementwise += elementwise * _size(eqn.outvars[0])
      counts.transcendental += transcendental * _size(eqn.outvars[0])
    elif name == "integer_pow":  # x**y by repeated multiplication.
      counts.elementwise += max(abs(eqn.params["y"]) - 1, 1) * _size(eqn.outvars[0])
    elif name == "cond":
      branches = [count_jaxpr(b) for b in eqn.params["branches"]]
      counts += max(branches, key=lambda c: c.total)
    for sub, times in _sub_jaxprs(eqn):
      counts += count_jaxpr(sub).scaled(times)
  return counts


def count(fn: Callable, *args, **kwargs) -> Counts:
  """FLOPs of `fn(*args, **kwargs)` (arrays or `jax.ShapeDtypeStruct`s), traced, not run."""
  return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs))
