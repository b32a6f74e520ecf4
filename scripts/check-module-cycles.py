#!/usr/bin/env python3
"""No import loops between the modules of a crate.

For every library crate of the workspace (the members of the root Cargo.toml), this builds the
graph of its module files (`src/a.rs` or `src/a/mod.rs` is module `a`, `src/a/b.rs` is `a::b`)
and fails when two or more modules depend on each other, directly or through others.

What counts as an edge A -> B: code in A's file names an item of module B by a path that starts
with `crate::`, `super::` or `self::`, in a `use` (grouped forms included) or inline
(`crate::kernels::repack(..)`). Inline `mod x { .. }` blocks count as part of their file.
Not edges: a module and its own ancestors or descendants (a parent declaring, re-exporting or
calling its children, and a child using its parent's shared helpers, are one unit: the
directory), and code under `#[cfg(test)]`.

Usage: scripts/check-module-cycles.py [ROOT]   (exit 1 when a cycle exists)
       scripts/check-module-cycles.py --self-test
"""
import re
import sys
import tempfile
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments(text):
    """Source without comments and string contents (line numbers kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif text[i] == '"' or text.startswith('r#"', i) or text.startswith('r"', i):
            if text[i] == "r":
                hashes = text[i + 1:text.index('"', i)]
                end = '"' + hashes
                j = text.find(end, i + 2 + len(hashes))
                j = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                j += 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif text[i] == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            j = text.index("'", i + 2 if text[i + 1] != "\\" else i + 3) + 1
            out.append("' '")
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def blank_test_code(text):
    """Blanks every item under `#[cfg(test)]` (its braces matched), keeping line numbers."""
    chars = list(text)
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        j = m.end()
        k = text.find("{", j)
        semi = text.find(";", j)
        if k < 0 or (0 <= semi < k):
            end = semi + 1
        else:
            depth, end = 0, k
            while end < len(text):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    depth -= 1
                    if depth == 0:
                        end += 1
                        break
                end += 1
        for p in range(m.start(), min(end, len(chars))):
            if chars[p] != "\n":
                chars[p] = " "
    return "".join(chars)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (renames and globs dropped)."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, parts = 0, 0, []
        for i, c in enumerate(s):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        for p in parts:
            if not p:
                continue
            if "{" in p:
                head, rest = p.split("{", 1)
                walk(prefix + head, rest[:-1])
            else:
                out.append((prefix + p).rstrip(":*").rstrip(":"))

    walk("", tree)
    return out


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # module path (tuple) -> file
        for f in sorted(src.rglob("*.rs")):
            rel = f.relative_to(src)
            if rel.parts[0] == "bin" or rel.name in ("main.rs",) and len(rel.parts) == 1:
                continue
            parts = list(rel.with_suffix("").parts)
            if parts == ["lib"]:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            self.files[tuple(parts)] = f

    def resolve(self, path):
        """The longest module prefix of `path` (a tuple), or None."""
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in self.files:
                return tuple(path[:n])
        return None

    def edges(self):
        """(from, to, file, line, text) for every dependency between modules."""
        found = []
        for mod, f in self.files.items():
            raw = f.read_text()
            text = blank_test_code(strip_comments(raw))
            lines = raw.splitlines()
            # Inline modules: their depth at each offset, so `super::` inside them stays in the file.
            depth_at = []
            depth, stack = 0, []
            for m in re.finditer(r"\bmod\s+" + IDENT + r"\s*\{|[{}]", text):
                tok = m.group(0)
                if tok.startswith("mod"):
                    stack.append("mod")
                    depth += 1
                    depth_at.append((m.end(), depth))
                elif tok == "{":
                    stack.append("{")
                elif stack:
                    if stack.pop() == "mod":
                        depth -= 1
                        depth_at.append((m.end(), depth))

            def inline_depth(pos):
                d = 0
                for off, dd in depth_at:
                    if off > pos:
                        break
                    d = dd
                return d

            refs = []
            for m in re.finditer(r"\buse\s+([^;]+);", text):
                for p in expand_use(m.group(1)):
                    refs.append((m.start(), p))
            for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::" + IDENT + r")+)", text):
                refs.append((m.start(), m.group(1)))
            for pos, p in refs:
                segs = p.split("::")
                if segs[0] == "crate":
                    target = segs[1:]
                elif segs[0] in ("super", "self"):
                    ups = 0
                    while segs and segs[0] in ("super", "self"):
                        ups += segs[0] == "super"
                        segs = segs[1:]
                    ups -= inline_depth(pos)
                    if ups < 0:
                        continue  # inside an inline module of this file, pointing into it
                    base = list(mod)[: len(mod) - ups] if ups <= len(mod) else []
                    target = base + segs
                else:
                    continue
                to = self.resolve(target)
                if to is None or to == mod or to[: len(mod)] == mod or mod[: len(to)] == to:
                    continue
                line = text.count("\n", 0, pos) + 1
                edge = (mod, to, f, line, lines[line - 1].strip())
                if edge not in found:
                    found.append(edge)
        return found


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(("crate",) + mod)


def check(root):
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", (root / "Cargo.toml").read_text()).group(1)
    bad = 0
    for member in re.findall(r'"([^"]+)"', members):
        src = root / member / "src"
        if not src.is_dir():
            continue
        crate = Crate(src)
        edges = crate.edges()
        for comp in cycles(edges):
            bad += 1
            print(f"{member}: modules that depend on each other: {', '.join(name(m) for m in comp)}")
            for a, b, f, line, text in edges:
                if a in comp and b in comp:
                    print(f"  {name(a)} -> {name(b)}  ({f.relative_to(root)}:{line}: {text})")
    if bad:
        print(f"{bad} module cycle(s)")
        return 1
    print("no module cycles")
    return 0


def self_test():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "Cargo.toml").write_text('[workspace]\nmembers = ["a"]\n')
        src = root / "a" / "src"
        (src / "k").mkdir(parents=True)
        (src / "lib.rs").write_text("pub mod k;\npub mod m;\npub mod s;\n")
        (src / "k" / "mod.rs").write_text("pub mod x;\npub mod y;\nuse self::x::X;\npub struct Shared;\n")
        (src / "k" / "x.rs").write_text("use super::Shared;\npub struct X;\n")
        (src / "k" / "y.rs").write_text("use super::{x::X, Shared};\n#[cfg(test)]\nmod tests { use crate::s::S; }\n")
        (src / "m.rs").write_text("// use crate::s::S;\nlet s = \"crate::s::S\";\npub fn f() { crate::k::y::g(); }\n")
        (src / "s.rs").write_text("mod imp { use super::S; }\npub struct S;\n")
        assert check(root) == 0, "an acyclic tree (parent/child uses, tests, comments, strings) was refused"
        (src / "s.rs").write_text("mod imp { use super::super::m::f; }\npub struct S;\n")
        (src / "k" / "y.rs").write_text("use crate::{s::S, k::x::X};\n")
        assert check(root) == 1, "the cycle m -> k::y -> s -> m was not found"
    print("self-test passed")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    sys.exit(check(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)))
