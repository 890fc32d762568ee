"""Build hook: generate quiver._proto from protos/*.proto with grpcio-tools.

Everything else about the package is declared in pyproject.toml. The generated modules are
never committed; a regular build writes them into the wheel, an editable install into
quiver/_proto/ (ignored by git), where the editable finder looks for them.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
PROTOS = ROOT / "protos"
PACKAGE = "quiver/_proto"


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        out = ROOT if self.editable_mode else Path(self.build_lib)
        generate(out)


def generate(out: Path) -> None:
    from grpc_tools import protoc

    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    (out / PACKAGE / "__init__.py").write_text('"""Generated from protos/ by setup.py."""\n')
    for proto in sorted(PROTOS.glob("*.proto")):
        # Map protos/ onto the package path so generated modules import each other absolutely.
        args = [
            "protoc",
            f"-I{PACKAGE}={PROTOS}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


setup(cmdclass={"build_py": BuildPyWithProtos})
