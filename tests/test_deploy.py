"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas, the Dockerfile passes
hadolint, every embedded sseproxy config loads, and the grace periods fit shutdown_grace."""

from __future__ import annotations

import asyncio
import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from procs import sseproxy_process

from sseproxy.loader import load

DEPLOY = Path(__file__).parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
ENV = {"OPENAI_API_KEY": "k", "SSEPROXY_TOKEN": "t", "UPSTREAM_KEY": "u"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema error


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_embedded_configs_load_and_grace_periods_fit(path: Path, tmp_path: Path) -> None:
    docs = documents(path)
    configs = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configs
    for config_map in configs:
        text = config_map["data"]["config.yaml"].replace("/run/secrets/llm", str(tmp_path))
        (tmp_path / "openai-api-key").write_text("sk-test\n")
        (tmp_path / "config.yaml").write_text(text)
        config = load(tmp_path / "config.yaml", env=ENV)
        for deployment in (d for d in docs if d["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            proxy = next(c for c in pod["containers"] if "sseproxy" in c["image"])
            pre_stop = int(proxy["lifecycle"]["preStop"]["exec"]["command"][1])
            assert pod["terminationGracePeriodSeconds"] > pre_stop + config.shutdown_grace


def test_dockerfile_passes_hadolint_and_checks_health() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in text and "/_sseproxy/health" in text and "HEALTHCHECK" in text


def test_compose_config_loads_and_stop_grace_fits(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    config = load(DEPLOY / "compose-config.yaml", env=ENV)
    assert config.inbound_auth is not None  # it listens on every address
    grace = int(re.match(r"(\d+)s", compose["services"]["sseproxy"]["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > config.shutdown_grace
    assert compose["services"]["mock-llm"]["entrypoint"][:3] == ["sseproxy", "demo", "--mock-only"]


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "sseproxy.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("sseproxy serve --config /etc/sseproxy/config.yaml")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(service["TimeoutStopSec"]) > 30  # longer than the default shutdown_grace


async def test_demo_mock_only_serves_the_mock_upstream() -> None:
    from helpers import free_port, raw_request

    port = free_port()
    async with sseproxy_process("demo", "--mock-only", "--listen", f"127.0.0.1:{port}",
                                ready="mock LLM upstream listening on ") as (proc, url):
        resp = await raw_request(url, "POST", "/v1/chat/completions", {"Content-Type": "application/json"},
                                 json.dumps({"stream": True, "messages": []}).encode())
        assert resp.headers["content-type"].startswith("text/event-stream")
        first = await resp.next_chunk()
        assert first is not None and first.startswith(b"data: {")
        resp.close()
    assert proc.returncode == 0
    await asyncio.sleep(0)
