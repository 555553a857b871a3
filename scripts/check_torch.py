"""`make setup`'s check after installing torch: say which build it is; warn loudly about a CUDA build.

The CUDA build works on CPUs too, but it is ~3 GB of nvidia-* wheels instead of ~200 MB. It lands when PyTorch's
CPU wheel index (https://download.pytorch.org/whl/cpu) was unreachable and pip fell back to PyPI, whose Linux
x86-64 torch is the CUDA build. Exit status 0 either way (the project runs with both); `--strict` makes a CUDA
build exit 1.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        print(f"setup: torch {torch.__version__} is the CPU build", flush=True)
        return 0
    index = "https://download.pytorch.org/whl/cpu"
    print(
        "\n".join(
            [
                "",
                "!" * 100,
                f"WARNING: torch {torch.__version__} is a CUDA {cuda} build (PyTorch's CPU index {index} was not",
                "reachable, so pip took PyPI's torch, with its nvidia-* wheels). It works, on CPUs too, but takes",
                "~3 GB. For the CPU build, once that index is reachable:",
                f"  {sys.executable} -m pip install --force-reinstall --no-deps torch=={torch.__version__.split('+')[0]} "
                f"--index-url {index}",
                "!" * 100,
                "",
            ]
        ),
        file=sys.stderr,
        flush=True,
    )
    return 1 if "--strict" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
