"""The shape of ``tutx.kernels``: explicit public names, short modules, no private imports across modules."""
import ast
import importlib
import pathlib

import tutx.kernels

KERNELS = pathlib.Path(tutx.kernels.__file__).parent


def test_every_public_name_resolves():
    for name in tutx.kernels.__all__:
        assert callable(getattr(tutx.kernels, name)), name
    assert "flash_attention" in dir(tutx.kernels)


def test_modules_are_short_and_import_no_private_names_of_other_modules():
    for path in sorted(KERNELS.glob("*.py")):
        source = path.read_text()
        assert source.count("\n") <= 300, f"{path.name}: {source.count(chr(10))} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tutx"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_window_helpers_live_in_a_leaf_module():
    tree = ast.parse((KERNELS / "masks.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "tutx.kernels._triton"}
    importlib.import_module("tutx.kernels.sliding_window")  # forward and backward import without a cycle
