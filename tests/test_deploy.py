"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas, the Dockerfile passes
hadolint, every embedded or mounted sseproxy config loads and passes ``sseproxy check``, and the grace
periods fit shutdown_grace. The resumable-streams compose set-up (two replicas, one Redis, nginx on one
port) also runs here without Docker: its own config files, with the service names swapped for local ports."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from helpers import WAIT, free_port
from procs import run_cli, sseproxy_process
from redis_server import redis_server
from test_doctor_culprits import nginx_binary, nginx_conf, require

from sseproxy import demo
from sseproxy.loader import load

DEPLOY = Path(__file__).parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
ENV = {"OPENAI_API_KEY": "k", "SSEPROXY_TOKEN": "t", "UPSTREAM_KEY": "u"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def sseproxy_pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod specs of the Deployments that run sseproxy (a manifest may run Redis beside it)."""
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    return [pod for pod in pods if any("sseproxy" in c["image"] for c in pod["containers"])]


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
        for pod in sseproxy_pods(docs):
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


COMPOSE_FILES = sorted(DEPLOY.glob("docker-compose*.yml"))
PROXY_CONFIG = "/etc/sseproxy/config.yaml"  # where the image reads its config


def grace_seconds(service: dict[str, Any]) -> int:
    return int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
async def test_compose_mounts_exist_configs_pass_check_and_stop_grace_fits(path: Path) -> None:
    compose = yaml.safe_load(path.read_text())
    proxies = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert (path.parent / source).is_file(), f"{path.name}: {name} mounts {source}, which is not there"
            if target == PROXY_CONFIG:
                proxies += 1
                code, _, err = await run_cli("check", str(path.parent / source), env=ENV)
                assert code == 0, err
                assert grace_seconds(service) > load(path.parent / source, env=ENV).shutdown_grace
    assert proxies


def test_compose_resume_puts_two_replicas_and_one_redis_behind_one_port() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.resume.yml").read_text())["services"]
    replicas = [name for name, s in services.items()
                if any(v.split(":")[1] == PROXY_CONFIG for v in s.get("volumes", []))]
    assert replicas == ["sseproxy-a", "sseproxy-b"]
    assert services["sseproxy-a"] == services["sseproxy-b"]  # one definition, the x-sseproxy anchor
    assert [name for name, s in services.items() if "ports" in s] == ["nginx"]  # one port for both
    assert sorted(services["nginx"]["depends_on"]) == replicas
    assert services["redis"]["image"].startswith("redis:")
    route = load(DEPLOY / "compose-resume-config.yaml", env=ENV).routes[0]
    assert route.resume is not None and route.resume.store == "redis://redis:6379/0"
    nginx = (DEPLOY / "nginx-resume.conf").read_text()
    assert re.findall(r"server (\S+):8080;", nginx) == replicas
    assert "proxy_buffering off;" in nginx


async def test_kubernetes_resume_runs_2_replicas_on_one_redis_only_they_reach(tmp_path: Path) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in documents(DEPLOY / "kubernetes" / "resume.yaml")}
    proxy = docs["Deployment", "sseproxy"]
    assert proxy["spec"]["replicas"] == 2
    (tmp_path / "config.yaml").write_text(docs["ConfigMap", "sseproxy"]["data"]["config.yaml"])
    code, out, err = await run_cli("check", "--allow-missing-env", str(tmp_path / "config.yaml"))
    assert code == 0, err
    assert "resume: store=redis://redis:6379/0 " in out  # the Service below
    redis_labels = docs["Deployment", "redis"]["spec"]["template"]["metadata"]["labels"]
    service = docs["Service", "redis"]["spec"]
    assert service["selector"].items() <= redis_labels.items() and service["ports"][0]["port"] == 6379
    policy = docs["NetworkPolicy", "redis"]["spec"]
    assert policy["podSelector"]["matchLabels"] == redis_labels
    assert [peer["podSelector"]["matchLabels"] for peer in policy["ingress"][0]["from"]] == \
        [proxy["spec"]["template"]["metadata"]["labels"]]


# what the nginx image's nginx.conf does (conf.d/*.conf inside http), with paths a test may write
NGINX_MAIN_HTTP = "  include {prefix}/default.conf;"


def swapped(text: str, swaps: dict[str, str]) -> str:
    """``text`` with each key replaced; each must be there, so a changed deploy file fails loudly."""
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


@contextlib.asynccontextmanager
async def nginx_running(conf: str, prefix: Path) -> AsyncIterator[str]:
    """Debian's nginx with ``conf`` as its conf.d/default.conf: ``nginx -t`` passes, then it serves;
    yields its URL (``conf`` listens on ``{port}``)."""
    binary = nginx_binary()
    require(binary is not None, "needs nginx (Debian's package)")
    assert binary is not None
    prefix.mkdir()
    port = free_port()
    (prefix / "default.conf").write_text(conf.replace("{port}", str(port)))
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, NGINX_MAIN_HTTP.format(prefix=prefix)))
    args = ["-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"]
    test = subprocess.run([binary, "-t", *args], capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr
    proc = await asyncio.create_subprocess_exec(binary, *args, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(WAIT * 2):  # no ready line: it serves once it accepts
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # by its pid: the master, which stops its worker
        await asyncio.wait_for(proc.wait(), WAIT * 2)


def events_of(body: bytes) -> list[tuple[str, str]]:
    """``(data, id)`` of each event the proxy numbered."""
    return [(f["data"], f["id"]) for e in body.split(b"\n\n") if e
            for f in [dict(line.split(": ", 1) for line in e.decode().split("\n"))]]


async def test_compose_resume_set_up_resumes_on_the_other_replica_here_without_docker(tmp_path: Path) -> None:
    """The compose file's services as local processes: redis-server, ``sseproxy demo --mock-only``, two
    ``sseproxy serve`` with compose-resume-config.yaml and nginx with nginx-resume.conf. An answer
    started through nginx and dropped after 3 events is resumed through nginx twice: round robin
    sends the resumes to both replicas, and each gets the rest exactly once, with the normal end."""
    auth = {"Authorization": f"Bearer {ENV['SSEPROXY_TOKEN']}"}
    async with redis_server(tmp_path) as redis, sseproxy_process(
            "demo", "--mock-only", "--listen", f"127.0.0.1:{free_port()}",
            ready="mock LLM upstream listening on ") as (_, mock):
        config = tmp_path / "config.yaml"
        config.write_text(swapped((DEPLOY / "compose-resume-config.yaml").read_text(),
                                  {"redis://redis:6379/0": redis.url, "http://mock-llm:9000": mock}))
        serve = ("serve", "--config", str(config), "--listen", "127.0.0.1:0")
        async with sseproxy_process(*serve, env=ENV) as (a, url_a), sseproxy_process(*serve, env=ENV) as (b, url_b):
            conf = swapped((DEPLOY / "nginx-resume.conf").read_text(), {
                "sseproxy-a:8080": url_a.removeprefix("http://"), "sseproxy-b:8080": url_b.removeprefix("http://"),
                "listen 8080;": "listen 127.0.0.1:{port};"})
            async with nginx_running(conf, tmp_path / "nginx") as lb, aiohttp.ClientSession() as session:
                timeout = aiohttp.ClientTimeout(sock_read=WAIT * 2)
                async with session.post(f"{lb}/v1/chat/completions", json={"stream": True, "messages": []},
                                        headers=auth, timeout=timeout) as r:
                    assert r.status == 200
                    sid = r.headers["Sseproxy-Stream-Id"]
                    first = [events_of(await r.content.readuntil(b"\n\n"))[0] for _ in range(3)]
                    r.close()  # the client drops mid-answer
                rests = []
                for _ in range(2):
                    async with session.get(f"{lb}/v1/chat/completions", timeout=timeout,
                                           headers={**auth, "Last-Event-ID": f"{sid}.3"}) as r:
                        assert r.status == 200 and r.headers["Sseproxy-Stream-Id"] == sid
                        rests.append(events_of(await r.read()))  # a truncated end would raise
                code, out, err = await run_cli("doctor", "--json", "-H", f"Authorization: {auth['Authorization']}",
                                               "-d", '{"stream": true, "messages": []}', f"{lb}/v1/chat/completions")
                assert (code, json.loads(out)["verdict"]) == (0, "streams"), out + err  # nothing on the way buffers
            for proc in (a, b):
                proc.send_signal(signal.SIGTERM)
            logs = [(await asyncio.wait_for(p.stderr.read(), WAIT * 2)).decode() for p in (a, b) if p.stderr]
    ids = [i for _, i in first + rests[0]]
    assert ids == [f"{sid}.{n}" for n in range(1, len(ids) + 1)] and rests[1] == rests[0]  # each event once
    assert rests[0][-1][0] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d, _ in first + rests[0][:-1]) \
        == demo.ANSWER
    resumes = [[json.loads(line) for line in log.splitlines() if '"resumed_from": 3' in line] for log in logs]
    assert [len(r) for r in resumes] == [1, 1], logs  # one resume on each replica
