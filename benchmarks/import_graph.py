"""Which of the package's modules each module imports: at the top, and lazily (inside functions).

    python benchmarks/import_graph.py [dogbreeds]
"""

import ast
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "dogbreeds")
for path in sorted(root.glob("*.py")):
    tree = ast.parse(path.read_text())
    top, lazy = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "dogbreeds":
            names = [alias.name for alias in node.names if alias.name != "__version__"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dogbreeds."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("dogbreeds.")]
        (top if node in tree.body else lazy).update(names)
    later = f"  (lazily: {', '.join(sorted(lazy - top))})" if lazy - top else ""
    print(f"{path.stem:12s} -> {', '.join(sorted(top))}{later}")
