#!/usr/bin/env python3
"""The module graph of a Rust crate's source folder, drawn from its `use` paths.

    scripts/module_graph.py serve/src            # edges as text; exit 1 on a cycle
    scripts/module_graph.py serve/src --dot      # Graphviz DOT (| dot -Tsvg > graph.svg)

A module is a file (`lib.rs` is `crate`, `http/mod.rs` is `crate::http`,
`http/v1.rs` is `crate::http::v1`). Module A depends on module B when A's code (not
its comments, not its `#[cfg(test)]` test module) names a path into B: a `use
crate::...`, `use super::...` or `use self::...` declaration (groups expanded), or a
`crate::...` / `super::...` path in an expression or a type. The path is attributed
to the longest module prefix it names. `mod x;` declarations (ownership) are not
dependencies. A cycle is a strongly connected set of modules of size > 1, or a module
that depends on itself through its own descendants' re-exports (not counted here).

This is the project's stand-in for `cargo modules dependencies --acyclic` (which
needs rust-analyzer's crates to build).
"""

import argparse
import re
import sys
from pathlib import Path


def strip_comments_and_strings(src: str) -> str:
    """The source with comments removed and string / char literals emptied."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', src[i:i + 10]) and not (i and (src[i - 1].isalnum() or src[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', src[i:]).group(1)
            end = src.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", src[i:i + 4]):
            # A char literal ('a', '\n'); lifetimes ('a) have no closing quote.
            m = re.match(r"'(\\.|[^\\'])'", src[i:])
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_test_module(src: str) -> str:
    """Drops a trailing `#[cfg(test)] mod tests { ... }` (tests may use anything)."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", src)
    return src[: m.start()] if m else src


def modules(root: Path) -> dict:
    """Module path -> file, for every .rs file under `root` but `main.rs`."""
    mods = {}
    for f in sorted(root.rglob("*.rs")):
        rel = f.relative_to(root)
        if rel == Path("main.rs") or "snapshots" in rel.parts:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts == ["lib"]:
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        mods["::".join(["crate", *parts])] = f
    return mods


def expand_use(tree: str) -> list:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (aliases dropped)."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.groups()
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    if cur:
        items.append(cur)
    out = []
    for it in items:
        for p in expand_use(it):
            out.append(prefix + p if p != "self" else prefix.rstrip(":"))
    return out


def resolve(path: str, here: str, mods: dict):
    """The module a path (`crate::a::b`, `super::x`, `self::y`, or `child::z` for a
    module declared in `here`) points into."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    base = here.split("::")
    if f"{here}::{segs[0]}" in mods and segs[0] not in ("crate", "super", "self"):
        path = "self::" + path
        segs = ["self", *segs]
    # A file module `a/b.rs` is `crate::a::b`; `super` is its parent. `mod.rs` likewise.
    while segs and segs[0] in ("super", "self"):
        if segs[0] == "super":
            base = base[:-1]
        segs = segs[1:]
    if path.startswith("crate"):
        base, segs = ["crate"], segs[1:]
    elif not path.startswith(("super", "self")):
        return None
    full = base + segs
    for k in range(len(full), 0, -1):
        cand = "::".join(full[:k])
        if cand in mods:
            return cand
    return None


def edges(root: Path) -> dict:
    mods = modules(root)
    graph = {m: set() for m in mods}
    for mod, f in mods.items():
        src = without_test_module(strip_comments_and_strings(f.read_text()))
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", src):
            paths.extend(expand_use(m.group(1)))
        code = re.sub(r"\buse\s+[^;]+;", "", src)
        paths.extend(m.group(0) for m in re.finditer(r"\b(?:crate|super|self)(?:::\w+)+", code))
        children = {k.rsplit("::", 1)[1] for k in mods if k.rsplit("::", 1)[0] == mod and k != mod}
        for m in re.finditer(r"(?<![:\w])(\w+)(?:::\w+)+", code):
            if m.group(1) in children:
                paths.append(m.group(0))
        for p in paths:
            target = resolve(p, mod, mods)
            if target and target != mod:
                graph[mod].add(target)
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def dot(graph: dict) -> str:
    lines = ["digraph modules {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    for v in sorted(graph):
        lines.append(f'  "{v}";')
        for w in sorted(graph[v]):
            lines.append(f'  "{v}" -> "{w}";')
    lines.append("}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="the crate's source folder, e.g. serve/src")
    ap.add_argument("--dot", action="store_true", help="print Graphviz DOT")
    args = ap.parse_args(argv)
    graph = edges(args.src)
    if args.dot:
        print(dot(graph))
    else:
        for v in sorted(graph):
            print(f"{v} -> {', '.join(sorted(graph[v])) or '(nothing)'}")
    found = cycles(graph)
    for c in found:
        print(f"CYCLE: {' <-> '.join(c)}", file=sys.stderr)
    n_edges = sum(len(s) for s in graph.values())
    print(f"{len(graph)} modules, {n_edges} dependencies, {len(found)} cycles", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
