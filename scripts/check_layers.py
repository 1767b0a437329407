#!/usr/bin/env python3
"""Tidy check of the workspace's layering (run by scripts/test.sh).

Fails, naming file and line, when:

1. a crate depends on a crate of its own layer or above (Cargo.toml
   [dependencies]; dev-dependencies are free): the data flow is
   core -> db, store, kernels -> engine, jobs -> api -> cli, and no
   protocol adapter (api) depends on the engine;
2. a file of the engine imports from a layer above its own: error <
   weights < layers < models < schedulers < pipelines < generator < lib.rs
   (ARCHITECTURE.md draws them);
3. files of the engine or the kernels import each other in a loop (a path
   `crate::a::b`, `super::x`, a declared child's `child::x` or a
   `use crate::{..}` group is an edge to the file that defines that module;
   declaring `mod child;` is not);
4. `unsafe` appears outside crates/kernels, a crate root other than the
   kernels' lacks `#![forbid(unsafe_code)]`, or an `unsafe fn` in the
   kernels has no `# Safety` section.

`--selftest` plants an upward import and a cycle in a copy of the engine
and checks that both are caught.
"""

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Crate layers, lowest first. A crate may depend only on lower layers.
CRATE_LAYERS = {
    "cyberimage-core": 0,
    "cyberimage-db": 1,
    "cyberimage-store": 1,
    "cyberimage-kernels": 1,
    "cyberimage-engine": 2,
    "cyberimage-jobs": 2,
    # A service beside the jobs: one chat request, no queue, no engine.
    "cyberimage-enrich": 2,
    "cyberimage-api": 3,
    "cyberimage": 4,
}
# Dependencies refused whatever the layers say.
FORBIDDEN_DEPS = {("cyberimage-api", "cyberimage-engine"): "adapters never touch the engine"}
# Only a test double; never a normal dependency.
DEV_ONLY = {"cyberimage-testkit"}

# The engine's layers, by first module segment under crates/engine/src.
ENGINE_LAYERS = ["error", "weights", "layers", "models", "schedulers", "pipelines", "generator"]
LIB_RANK = len(ENGINE_LAYERS)

PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP_RE = re.compile(r"\bcrate::\{([^}]*)\}")


def strip_comments(line):
    """The line without a `//` comment and string literals (roughly)."""
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    return line.split("//", 1)[0]


def module_file(src, segments):
    """The file that defines the deepest existing module of `segments`
    (a path below the crate root `src`), and how many segments it used."""
    current = src / "lib.rs"
    folder = src
    used = 0
    for seg in segments:
        if (folder / f"{seg}.rs").is_file():
            current = folder / f"{seg}.rs"
        elif (folder / seg / "mod.rs").is_file():
            current = folder / seg / "mod.rs"
        else:
            break
        folder = folder / seg
        used += 1
    return current, used


def module_path(src, file):
    """A file's module segments below the crate root."""
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def imports(src, file):
    """(line number, target file) for every module path the file names."""
    own = module_path(src, file)
    text = file.read_text()
    # Children declared here, named by bare paths (`winograd::convolve`).
    children = re.findall(r"^\s*(?:pub(?:\(crate\))?\s+)?mod\s+([a-z_0-9]+)\s*;", text, re.M)
    child_re = re.compile(r"(?<![:\w])(?:self::)?(" + "|".join(children) + r")::") if children else None
    in_tests = False
    for number, raw in enumerate(text.splitlines(), 1):
        if re.match(r"\s*(pub(\(crate\))?\s+)?mod tests\b", raw):
            in_tests = True
        line = strip_comments(raw)
        if child_re:
            for m in child_re.finditer(line):
                target, used = module_file(src, own + [m.group(1)])
                if used == len(own) + 1:
                    yield number, target
        for group in GROUP_RE.finditer(line):
            for item in group.group(1).split(","):
                item = item.strip()
                if item and item != "self":
                    target, used = module_file(src, item.split("::")[0:1])
                    yield number, target if used else src / "lib.rs"
        for m in PATH_RE.finditer(line):
            segments = m.group(2).strip(":").split("::")
            if m.group(1) == "crate":
                base = []
            else:
                if in_tests:
                    continue  # `super` of a tests module is the file itself
                base = own[:-1]
                while segments and segments[0] == "super":
                    segments.pop(0)
                    base = base[:-1]
            target, _ = module_file(src, base + segments)
            yield number, target


def engine_rank(src, file):
    rel = file.relative_to(src)
    if rel == Path("lib.rs"):
        return LIB_RANK
    first = rel.parts[0].removesuffix(".rs")
    if first not in ENGINE_LAYERS:
        return None
    return ENGINE_LAYERS.index(first)


def check_cycles(src, problems):
    graph = {}
    for file in sorted(src.rglob("*.rs")):
        graph[file] = {t for _, t in imports(src, file) if t != file}
    # Tarjan's strongly connected components.
    index, low, stack, on_stack, counter = {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                names = ", ".join(sorted(str(c.relative_to(ROOT_OF[src])) for c in component))
                problems.append(f"import cycle between {names}")

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)


ROOT_OF = {}


def check_engine(root, problems):
    src = root / "crates/engine/src"
    ROOT_OF[src] = root
    for file in sorted(src.rglob("*.rs")):
        own = engine_rank(src, file)
        if own is None:
            problems.append(f"{file.relative_to(root)}: not in a layer folder ({', '.join(ENGINE_LAYERS)})")
            continue
        for number, target in imports(src, file):
            theirs = engine_rank(src, target)
            if theirs is not None and theirs > own:
                problems.append(
                    f"{file.relative_to(root)}:{number}: imports {target.relative_to(root)}, "
                    f"a layer above its own ({layer_name(theirs)} > {layer_name(own)})"
                )
    check_cycles(src, problems)
    kernels = root / "crates/kernels/src"
    ROOT_OF[kernels] = root
    check_cycles(kernels, problems)


def layer_name(rank):
    return "lib.rs" if rank == LIB_RANK else ENGINE_LAYERS[rank]


def dependencies(manifest):
    """Workspace crates named under [dependencies] (not dev-dependencies)."""
    section = None
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
            continue
        name = re.match(r"\s*(cyberimage[a-z-]*)\s*[.=]", line)
        if name and section in ("dependencies", "build-dependencies"):
            yield number, name.group(1)


def check_crates(root, problems):
    for manifest in sorted(root.glob("crates/*/Cargo.toml")):
        name = re.search(r'^name\s*=\s*"([^"]+)"', manifest.read_text(), re.M).group(1)
        if name in DEV_ONLY:
            continue
        if name not in CRATE_LAYERS:
            problems.append(f"{manifest.relative_to(root)}: crate {name} has no layer in check_layers.py")
            continue
        for number, dep in dependencies(manifest):
            where = f"{manifest.relative_to(root)}:{number}"
            if dep in DEV_ONLY:
                problems.append(f"{where}: {dep} is a test double, only a dev-dependency")
            elif (name, dep) in FORBIDDEN_DEPS:
                problems.append(f"{where}: {name} depends on {dep}: {FORBIDDEN_DEPS[(name, dep)]}")
            elif dep in CRATE_LAYERS and CRATE_LAYERS[dep] >= CRATE_LAYERS[name]:
                problems.append(f"{where}: {name} depends on {dep}, a crate of its own layer or above")


def check_unsafe(root, problems):
    # In the kernels, every `unsafe fn` says what its callers must promise:
    # a `# Safety` section in the doc comment just above it.
    for file in sorted((root / "crates/kernels/src").rglob("*.rs")):
        lines = file.read_text().splitlines()
        for number, raw in enumerate(lines, 1):
            if re.search(r"\bunsafe fn\b", strip_comments(raw)):
                above = lines[max(0, number - 12):number - 1]
                if not any("# Safety" in line for line in above):
                    problems.append(f"{file.relative_to(root)}:{number}: unsafe fn without a # Safety section")
    for crate in sorted(root.glob("crates/*")):
        if crate.name == "kernels":
            continue
        for file in sorted(crate.rglob("*.rs")):
            for number, raw in enumerate(file.read_text().splitlines(), 1):
                if re.search(r"\bunsafe\b", strip_comments(raw)) and "forbid(unsafe_code)" not in raw:
                    problems.append(f"{file.relative_to(root)}:{number}: unsafe outside crates/kernels")
        for name in ("src/lib.rs", "src/main.rs"):
            entry = crate / name
            if entry.is_file() and "#![forbid(unsafe_code)]" not in entry.read_text():
                problems.append(f"{entry.relative_to(root)}: lacks #![forbid(unsafe_code)]")


def run(root):
    problems = []
    check_crates(root, problems)
    check_engine(root, problems)
    check_unsafe(root, problems)
    return problems


def selftest():
    """Plants an upward import and a cycle; both must be reported."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        shutil.copytree(ROOT / "crates", copy / "crates")
        clean = run(copy)
        assert not clean, f"the copy should pass first: {clean}"
        vae = copy / "crates/engine/src/models/vae.rs"
        vae.write_text(vae.read_text() + "\nuse crate::pipelines::sd::StableDiffusion;\n")
        ddim = copy / "crates/engine/src/schedulers/ddim.rs"
        ddim.write_text(ddim.read_text() + "\nuse crate::schedulers::Scheduler;\n")
        found = run(copy)
        upward = [p for p in found if "models/vae.rs" in p and "a layer above" in p]
        cycle = [p for p in found if "import cycle" in p and "ddim.rs" in p]
        assert upward, f"planted upward import not caught: {found}"
        assert cycle, f"planted cycle not caught: {found}"
        print("check_layers selftest: planted upward import and cycle both caught")
        for p in upward + cycle:
            print("  ", p)


def main():
    if "--selftest" in sys.argv:
        selftest()
        return 0
    problems = run(ROOT)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check_layers: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("check_layers: crate and engine layers hold, no import cycles, unsafe only in crates/kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
