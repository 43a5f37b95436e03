"""The package's layering, read from the source with `ast` (no warmstart module is imported): low
layers never import high ones, tasks are reached only through the entry points, there is no import
cycle (lazy imports included), no module reaches into another's private names, and no submodule
shadows a public function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "warmstart"

# Lowest first. A module's layer is that of its longest matching entry: "warmstart" is exactly the
# package __init__, every other entry also covers the modules below it ("warmstart.data" covers
# warmstart.data.tables).
LAYERS = [
    # 0: cross-cutting leaves: they may import each other (but no cycle)
    {
        "warmstart.errors",
        "warmstart.files",
        "warmstart.progress",
        "warmstart.runs",
        "warmstart.metrics",
        "warmstart.plots",
        "warmstart.distributed",
        "warmstart.config",
    },
    {"warmstart.data"},
    {"warmstart.models"},
    # subscribers to the training engines' events (run log, early stopping, trackers, tune's pruning)
    {"warmstart.callbacks"},
    {"warmstart.inference", "warmstart.training", "warmstart.objectives"},
    {"warmstart.kinds", "warmstart.lowshot"},
    {"warmstart.tuning"},  # tune's search: space, study, trial processes, report
    {"warmstart.serving"},
    # model cards and publishing: read run and model folders, never a task kind
    {"warmstart.hub"},
    {"warmstart.tasks"},
    # entry points: like the leaves they may import each other (__main__ runs cli; reference writes
    # the docs' CLI and API pages from the command table)
    {
        "warmstart",
        "warmstart.__main__",
        "warmstart.cli",
        "warmstart.commands",
        "warmstart.reference",
    },
]
ENTRY = len(LAYERS) - 1
# warmstart.<command> is a lazily imported function: a submodule of that name would replace it once
# imported
COMMANDS = {
    "finetune",
    "evaluate",
    "predict",
    "generate",
    "pretrain",
    "embed",
    "probe",
    "zeroshot",
    "fewshot",
    "serve",
    "export",
    "calibrate",
    "push",
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder `root`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_module(root: Path, name: str) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def parse(root: Path) -> dict[str, set[tuple[str, str | None]]]:
    """Module -> {(imported module, name taken from it or None)} over the whole file (function
    bodies and `if TYPE_CHECKING:` blocks too), plus (module, "_x") for each `alias._x` on a module
    bound by an import."""
    top, found = root.name, {}
    for module, path in modules(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        pairs, bound = (
            set(),
            {},
        )  # bound: name (or dotted name) in this file -> the module object it holds
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == top or a.name.startswith(top + "."):
                        pairs.add((a.name, None))
                        parts = a.name.split(".")
                        bound |= (
                            {a.asname: a.name}
                            if a.asname
                            else {
                                ".".join(parts[:i]): ".".join(parts[:i])
                                for i in range(1, len(parts) + 1)
                            }
                        )
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if (
                    node.level
                ):  # relative: from the package holding this module, `level - 1` packages up
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    up = package.split(".")[: package.count(".") + 2 - node.level]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base != top and not base.startswith(top + "."):
                    continue
                for a in node.names:
                    if is_module(root, f"{base}.{a.name}"):
                        pairs.add((f"{base}.{a.name}", None))
                        bound[a.asname or a.name] = f"{base}.{a.name}"
                    else:
                        pairs.add((base, a.name))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and is_private(node.attr)
                and dotted(node.value) in bound
            ):
                pairs.add((bound[dotted(node.value)], node.attr))
        found[module] = pairs
    return found


def edges(root: Path) -> list[tuple[str, str]]:
    """(importer, imported module); `from warmstart import __version__` takes a constant, not the
    package."""
    constant = (root.name, "__version__")
    return sorted(
        {(m, t) for m, pairs in parse(root).items() for t, name in pairs if (t, name) != constant}
    )


def layer(name: str) -> tuple[int | None, str]:
    """(layer index, matching entry) of a module; (None, "") when no layer holds it."""
    best = (None, "")
    for i, entries in enumerate(LAYERS):
        for e in entries:
            covers = name == e or (e != "warmstart" and name.startswith(e + "."))
            if covers and len(e) > len(best[1]):
                best = (i, e)
    return best


def unplaced(root: Path) -> list[str]:
    """Modules on disk in no layer, then imports of a module in no layer (test 2 cannot judge
    those)."""
    on_disk = [m for m in modules(root) if layer(m)[0] is None]
    imported = [
        f"{m} -> {t}" + ("" if is_module(root, t) else " (no such module)")
        for m, t in edges(root)
        if layer(t)[0] is None
    ]
    return on_disk + imported


def upward_imports(root: Path) -> list[str]:
    bad = []
    for m, t in edges(root):
        (i, own), (j, other) = layer(m), layer(t)
        if i is None or j is None or own == other or j < i or (i == j and i in (0, ENTRY)):
            continue
        bad.append(f"{m} -> {t}")
    return bad


def task_imports(root: Path) -> list[str]:
    tasks = f"{root.name}.tasks"
    return [
        f"{m} -> {t}"
        for m, t in edges(root)
        if (t == tasks or t.startswith(tasks + ".")) and layer(m)[0] != ENTRY
    ]


def cycles(root: Path) -> list[str]:
    """One cycle per back edge of a depth-first walk: every strongly connected knot shows at least
    once."""
    graph = defaultdict(set)
    for m, t in edges(root):
        if m != t:
            graph[m].add(t)
    found, state, path = [], {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def private_imports(root: Path) -> list[str]:
    return sorted(
        f"{m} -> {t}.{name}"
        for m, pairs in parse(root).items()
        for t, name in pairs
        if name and is_private(name) and t != m
    )


def shadowing_submodules(root: Path) -> list[str]:
    """The commands, plus any lowercase public name in a literal `__all__` of the package's
    __init__."""
    names = set(COMMANDS)
    for node in ast.parse((root / "__init__.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(dotted(t) == "__all__" for t in node.targets):
            elts = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else []
            names |= {
                e.value
                for e in elts
                if isinstance(e, ast.Constant)
                and str(e.value).islower()
                and not str(e.value).startswith("_")
            }
    return sorted(
        f"{root.name}.{n} -> shadows {root.name}.{n}()"
        for n in names
        if (root / f"{n}.py").exists() or (root / n).is_dir()
    )


def report(lines: list[str]) -> str:
    return "\n  " + "\n  ".join(lines)


def test_every_module_belongs_to_a_layer():
    # a new top-level module must be placed in LAYERS deliberately
    assert not (bad := unplaced(PKG)), "modules in no layer (place them in LAYERS):" + report(bad)


def test_nothing_imports_upwards_or_sideways():
    assert not (bad := upward_imports(PKG)), (
        "imports of a higher layer or a sibling package:" + report(bad)
    )


def test_tasks_are_imported_only_by_the_entry_points():
    # one task must not import another: shared code belongs in a lower layer
    assert not (bad := task_imports(PKG)), "tasks imported outside the entry points:" + report(bad)


def test_no_import_cycle():
    # lazy (function-level) imports count: a cycle they hide still breaks once the order changes
    assert not (bad := cycles(PKG)), "import cycles:" + report(bad)


def test_no_module_imports_another_modules_private_name():
    assert not (bad := private_imports(PKG)), "private names taken from another module:" + report(
        bad
    )


def test_no_submodule_shadows_a_public_function():
    assert not (bad := shadowing_submodules(PKG)), (
        "submodules named like a public function:" + report(bad)
    )


def test_the_checks_catch_violations_in_a_fake_tree(tmp_path):
    # so the tests above cannot pass vacuously
    files = {
        "__init__.py": "__all__ = ['finetune']\n",
        "data/__init__.py": "",
        "data/x.py": "import warmstart.tasks.finetune\n_helper = 1\n",
        "tasks/__init__.py": "",
        "tasks/finetune.py": "from warmstart.tasks import probe\n",
        "tasks/probe.py": "",
        "models/a.py": "from warmstart.models import b\nfrom warmstart.data.x import _helper\n",
        "models/b.py": "def f():\n    import warmstart.models.a as a\n    return a._hidden\n",
        "finetune/__init__.py": "",
        "stray.py": "",
    }
    root = tmp_path / "warmstart"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert "warmstart.data.x -> warmstart.tasks.finetune" in upward_imports(root)
    assert task_imports(root) == [
        "warmstart.data.x -> warmstart.tasks.finetune",
        "warmstart.tasks.finetune -> warmstart.tasks.probe",
    ]
    assert cycles(root) == ["warmstart.models.a -> warmstart.models.b -> warmstart.models.a"]
    assert private_imports(root) == [
        "warmstart.models.a -> warmstart.data.x._helper",
        "warmstart.models.b -> warmstart.models.a._hidden",
    ]
    assert shadowing_submodules(root) == ["warmstart.finetune -> shadows warmstart.finetune()"]
    assert "warmstart.stray" in unplaced(root)


# -- resolve once, one contract per kind --------------------------------------------------------
# What reads a saved model back and must ask the kinds registry rather than branch on a kind.
READ_BACK = (
    "warmstart.tasks.evaluate",
    "warmstart.tasks.predict",
    "warmstart.tasks.export",
    "warmstart.serving",
)
KIND_NAMES = {
    "sequence",
    "tokens",
    "seq2seq",
    "causal-lm",
    "classifier",
    "nli",
    "tagger",
    "encoder",
    "text-to-text",
    "single-label",
    "multi-label",
    "regression",
}
# The names a command's options go by in the layers below tasks/ (the task passes them down).
OPTION_NAMES = {"cfg", "settings"}


def in_read_back(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in READ_BACK)


def kind_module_imports(root: Path) -> list[str]:
    """Imports of one kind's module (warmstart.kinds.<x>) by evaluate, predict, export or serving:
    they reach kinds only through the registry (the package itself)."""
    kinds = f"{root.name}.kinds"
    return sorted(
        f"{m} -> {t}" for m, t in edges(root) if in_read_back(m) and t.startswith(kinds + ".")
    )


def is_kind_test(node: ast.Compare, op: ast.cmpop, right: ast.expr) -> bool:
    """``x == "tagger"`` or ``x in ("classifier", "nli")`` (not ``"tokens" in message``)."""
    if isinstance(op, (ast.Eq, ast.NotEq)):
        sides = [node.left, right]
    elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
        sides = right.elts
    else:
        return False
    return any(isinstance(v, ast.Constant) and v.value in KIND_NAMES for v in sides)


def kind_comparisons(root: Path) -> list[str]:
    """``x == "tagger"``, ``x in ("classifier", "nli")``...: a branch on a kind's name."""
    found = []
    for module, path in modules(root).items():
        if not in_read_back(module):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(
                is_kind_test(node, op, right) for op, right in zip(node.ops, node.comparators)
            ):
                found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    return found


def option_assignments(root: Path) -> list[str]:
    """``cfg.x = ...`` (or augmented, or setattr(cfg, ...)) in any module below tasks/: options are
    resolved once, by the task (config.settle)."""
    found = []
    for module, path in modules(root).items():
        i, _ = layer(module)
        if (
            i is None
            or i >= layer(f"{root.name}.tasks")[0]
            or module.startswith(f"{root.name}.config")
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            for t in flat:
                if isinstance(t, ast.Attribute) and dotted(t.value) in OPTION_NAMES:
                    found.append(f"{module}:{node.lineno}: {ast.unparse(t)} = ...")
            if (
                isinstance(node, ast.Call)
                and dotted(node.func) == "setattr"
                and node.args
                and dotted(node.args[0]) in OPTION_NAMES
            ):
                found.append(f"{module}:{node.lineno}: setattr({ast.unparse(node.args[0])}, ...)")
    return found


def test_evaluate_predict_export_and_serving_reach_kinds_only_through_the_registry():
    assert not (bad := kind_module_imports(PKG)), "a kind imported around the registry:" + report(
        bad
    )


def test_evaluate_predict_export_and_serving_never_branch_on_a_kind_name():
    assert not (bad := kind_comparisons(PKG)), "comparisons with a kind's name:" + report(bad)


def test_no_option_is_assigned_below_the_tasks():
    assert not (bad := option_assignments(PKG)), "options assigned below tasks/:" + report(bad)


def test_the_checks_above_can_fail(tmp_path):
    """A package with one of each fault is caught by each check."""
    pkg = tmp_path / "warmstart"
    for sub in ("kinds", "tasks", "serving", "training"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "kinds" / "tokens.py").write_text("X = 1\n")
    (pkg / "tasks" / "evaluate.py").write_text(
        "from warmstart.kinds.tokens import X\n\ndef f(kind):\n    return kind == 'tagger'\n"
    )
    (pkg / "training" / "loop.py").write_text("def f(cfg):\n    cfg.lr = 1.0\n")
    assert kind_module_imports(pkg) == ["warmstart.tasks.evaluate -> warmstart.kinds.tokens"]
    assert kind_comparisons(pkg) == ["warmstart.tasks.evaluate:4: kind == 'tagger'"]
    assert option_assignments(pkg) == ["warmstart.training.loop:2: cfg.lr = ..."]
