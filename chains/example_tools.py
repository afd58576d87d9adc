"""The two example tools of the `tools` chain: both safe to expose to a model.

The calculator parses the expression with `ast` and evaluates only number literals and arithmetic
operators (never `eval`), with limits on size so a model cannot make the server compute 9**9**9.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
from collections.abc import Callable

from langchain_core.tools import BaseTool, tool

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """The expression is not plain arithmetic or is out of bounds; the message is shown to the model."""


def _evaluate(node: ast.AST) -> int | float:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponents above {MAX_EXPONENT} are not allowed")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
            raise CalculatorError("the result is out of range")
        return value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise CalculatorError("only numbers, + - * / // % ** and parentheses are allowed")


def calculate(expression: str) -> str:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise CalculatorError("the expression is not valid arithmetic") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)
    return str(value)


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as "12 * (3 + 4)" and return the exact result."""
    return calculate(expression)


@tool
def utc_time() -> str:
    """Return the current date and time in UTC (ISO 8601)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def example_tools() -> list[BaseTool]:
    return [calculator, utc_time]
