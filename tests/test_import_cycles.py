"""The architecture rule: no import cycles between the pack's modules or folders (scripts/check_import_cycles.py)."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_import_cycles.py"


def test_no_import_cycles(capsys):
    spec = importlib.util.spec_from_file_location("check_import_cycles", SCRIPT)
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    assert checker.main() == 0, capsys.readouterr().out


def test_the_checker_sees_function_level_imports():
    spec = importlib.util.spec_from_file_location("check_import_cycles", SCRIPT)
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    assert checker.cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
