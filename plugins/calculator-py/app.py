"""`calculator`: a tool written in Python (componentize-py), proof that
plugin authors are not tied to Rust. Evaluates an arithmetic expression
safely: numbers, + - * / // % **, parentheses, and a few math functions
(no names, attributes or calls outside that list are ever evaluated).

Build: componentize-py -d ../../wit -w tool componentize app -o calculator.wasm
"""

import ast
import json
import math

from wit_world import exports
from wit_world.exports.tool_api import ToolInfo, ToolError_InvalidArguments, ToolError_Failed
from wit_world.imports.types import PluginInfo
from componentize_py_types import Err

FUNCTIONS = {
    "sqrt": math.sqrt, "log": math.log, "log10": math.log10, "exp": math.exp,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "abs": abs,
    "round": round, "floor": math.floor, "ceil": math.ceil, "min": min, "max": max,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
BINARY = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b,
}
UNARY = {ast.UAdd: lambda a: +a, ast.USub: lambda a: -a}

CONFIG = {"precision": 12, "max_length": 500}


class CalcError(Exception):
    pass


def evaluate(node):
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise CalcError("exponent too large (limit 1000)")
        return BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](evaluate(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords:
        return FUNCTIONS[node.func.id](*[evaluate(a) for a in node.args])
    raise CalcError(f"unsupported expression element: {ast.dump(node)[:60]}")


def render(value):
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{CONFIG['precision']}g}"
    return str(value)


class ToolApi(exports.ToolApi):
    def describe(self) -> ToolInfo:
        return ToolInfo(
            info=PluginInfo(
                name="calculator",
                version="0.1.0",
                description="Evaluates an arithmetic expression (+ - * / // % **, parentheses, "
                "sqrt log log10 exp sin cos tan abs round floor ceil min max, pi, e).",
                config_schema=json.dumps({
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "precision": {"type": "integer", "minimum": 1, "maximum": 17, "default": 12},
                        "max_length": {"type": "integer", "minimum": 1, "default": 500},
                    },
                }),
            ),
            parameters_schema=json.dumps({
                "type": "object", "additionalProperties": False,
                "properties": {"expression": {"type": "string", "description": "e.g. (3 + 4) * 2"}},
                "required": ["expression"],
            }),
        )

    def init(self, config: str) -> None:
        try:
            cfg = json.loads(config) if config.strip() else {}
        except ValueError as e:
            raise Err(f"config: {e}")
        if not isinstance(cfg, dict):
            raise Err("config: expected a JSON object")
        for key, value in cfg.items():
            if key not in CONFIG:
                raise Err(f"config: unknown field `{key}` (expected precision, max_length)")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise Err(f"config: `{key}` must be a positive integer")
            CONFIG[key] = value

    def call(self, arguments: str) -> str:
        try:
            args = json.loads(arguments)
        except ValueError as e:
            raise Err(ToolError_InvalidArguments(f"arguments are not JSON: {e}"))
        if not isinstance(args, dict) or not isinstance(args.get("expression"), str):
            raise Err(ToolError_InvalidArguments('expected {"expression": string}'))
        expr = args["expression"]
        if len(expr) > CONFIG["max_length"]:
            raise Err(ToolError_InvalidArguments(f"expression longer than {CONFIG['max_length']} characters"))
        try:
            tree = ast.parse(expr, mode="eval")
        except SyntaxError as e:
            raise Err(ToolError_InvalidArguments(f"syntax error: {e.msg}"))
        try:
            return render(evaluate(tree))
        except CalcError as e:
            raise Err(ToolError_InvalidArguments(str(e)))
        except (ArithmeticError, ValueError, TypeError) as e:
            raise Err(ToolError_Failed(f"{type(e).__name__}: {e}"))
