"""YAML -> plain Python values plus the line of every path, so config errors can name both."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import yaml

Path = tuple  # ("models", "gpt-4o", "targets", 0)


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int | None
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {self.path or '<root>'}: {self.message}"


def path_str(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class Source:
    """Parsed YAML with a line for every path."""

    def __init__(self, text: str):
        self.lines: dict[Path, int] = {}
        self.problems: list[Problem] = []
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            self.problems.append(Problem("", mark.line + 1 if mark else None, f"invalid YAML: {exc}"))
            self.data = None
            return
        self.data = self._convert(node, ()) if node is not None else {}

    def line(self, path: Path) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path_str(path), self.line(path), message))

    def _convert(self, node, path: Path):
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = _scalar(key_node)
                if key == "<<":
                    self.problems.append(Problem(path_str(path), key_node.start_mark.line + 1,
                                                 "YAML merge keys (<<) are not supported"))
                    continue
                if key in out:
                    self.problems.append(Problem(path_str(path + (key,)), key_node.start_mark.line + 1,
                                                 f"duplicate key {key!r}"))
                out[key] = self._convert(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(v, path + (i,)) for i, v in enumerate(node.value)]
        return _scalar(node)


def _scalar(node):
    if not isinstance(node, yaml.ScalarNode):
        return str(node.start_mark)
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: str, env=os.environ) -> tuple[str, list[str]]:
    """Replace ${VAR} and ${VAR:-default}. Returns the text and the names of unset variables."""
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got:
            return got
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _VAR.sub(sub, value), missing
