import subprocess
import sys

import slimserve


def test_all_is_sorted_and_honest() -> None:
    def isort_style(name: str) -> tuple[int, str]:
        # ruff's RUF022 order: CONSTANTS, then Classes, then functions and dunders
        group = 0 if name.isupper() else 1 if name[0].isupper() else 2
        return group, name

    assert slimserve.__all__ == sorted(slimserve.__all__, key=isort_style)
    for name in slimserve.__all__:
        assert hasattr(slimserve, name), name
    public = {n for n in vars(slimserve) if not n.startswith("_") and n not in {"annotations"}}
    modules = {n for n in public if type(getattr(slimserve, n)).__name__ == "module"}
    assert public - modules == set(slimserve.__all__) - {"__version__"}


def test_import_stays_lean() -> None:
    code = (
        "import sys, slimserve; "
        "heavy = [m for m in ('torch', 'transformers', 'fastapi', 'grpc', 'ray', 'mlflow', "
        "'uvicorn', 'matplotlib', 'onnxruntime.quantization', 'sklearn') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_matches_the_package_metadata() -> None:
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert slimserve.__version__ == pyproject["project"]["version"]


def test_the_old_name_of_load_model_still_works() -> None:
    # ss.load was renamed ss.load_model (it loads a model; ss.load_predictor and
    # ss.load_artifact load the other two things); the old name stays for one release.
    assert slimserve.load is slimserve.load_model
