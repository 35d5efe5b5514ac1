"""Which of the package's modules each module imports: at the top, and lazily (inside functions).
A subpackage (`cifar`) is one node: the union of its modules' imports.

    python benchmarks/import_graph.py [dogbreeds]
"""

import ast
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "dogbreeds")
nodes = {path.stem: [path] for path in root.glob("*.py")}
nodes |= {folder.name: sorted(folder.glob("*.py")) for folder in root.iterdir() if (folder / "__init__.py").is_file()}
for name in sorted(nodes):
    top, lazy = set(), set()
    for path in nodes[name]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module == "dogbreeds":
                names = [alias.name for alias in node.names if alias.name != "__version__"]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dogbreeds."):
                names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("dogbreeds.")]
            (top if node in tree.body else lazy).update(set(names) - {name})
    later = f"  (lazily: {', '.join(sorted(lazy - top))})" if lazy - top else ""
    print(f"{name:12s} -> {', '.join(sorted(top))}{later}")
