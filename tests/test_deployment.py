"""Static checks of the deployment files: Dockerfile, .dockerignore, docker-compose.yml,
deploy/feeds.toml and the systemd unit in docs/deployment.md.

No Docker engine is needed: the files are parsed and cross-checked (the port, the config path,
the volume, the health probe agree everywhere), the health probe is run against a local server,
and hadolint, docker-compose and systemd-analyze are run when they are on PATH.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest

from aggregator.config import load_config

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY_DOC = ROOT / "docs" / "deployment.md"
VOLUME = PurePosixPath("/data")


# --- parsing helpers -------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(head.upper(), rest.strip()) for head, _, rest in (item.partition(" ") for item in logical)]


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage; global ARGs before the first FROM are left out."""
    found: list[list[tuple[str, str]]] = []
    for name, args in instructions(text):
        if name == "FROM":
            found.append([])
        if found:
            found[-1].append((name, args))
    return found


def global_args(text: str) -> dict[str, str]:
    args = {}
    for name, value in instructions(text):
        if name == "FROM":
            break
        if name == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            args[key] = default
    return args


def exec_form(args: str) -> list[str]:
    """An instruction's JSON (exec form) arguments; fails on the shell form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return value


def final_stage() -> list[tuple[str, str]]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def last(stage: list[tuple[str, str]], name: str) -> str:
    values = [args for instruction, args in stage if instruction == name]
    assert values, f"final stage has no {name}"
    return values[-1]


def healthcheck_command() -> list[str]:
    args = last(final_stage(), "HEALTHCHECK")
    assert " CMD " in f" {args} ", args
    return exec_form(args.split("CMD", 1)[1].strip())


def compose_file() -> dict:
    # PyYAML is not a declared test dependency yet: skip, rather than fail collection, without it.
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def service() -> dict:
    return compose_file()["services"]["aggregator"]


def published_ports() -> list[tuple[int, int]]:
    """(host, container) for each `ports:` entry ("8080:8080" or "127.0.0.1:8080:8080")."""
    pairs = []
    for entry in service()["ports"]:
        *_, host, container = str(entry).split(":")
        pairs.append((int(host), int(container.split("/")[0])))
    return pairs


def mounts() -> list[tuple[str, PurePosixPath, bool]]:
    """(source, target, read_only) for each short-syntax `volumes:` entry of the service."""
    found = []
    for entry in service()["volumes"]:
        source, target, *mode = entry.split(":")
        found.append((source, PurePosixPath(target), "ro" in mode))
    return found


def config_in_container() -> PurePosixPath:
    """The path after `--config` in the image's CMD."""
    command = exec_form(last(final_stage(), "CMD"))
    return PurePosixPath(command[command.index("--config") + 1])


def mounted_config() -> Path:
    """The file on the host that the compose file mounts at the daemon's config path."""
    wanted = config_in_container()
    for source, target, _ in mounts():
        if wanted == target or target in wanted.parents:
            return ROOT / source / wanted.relative_to(target)
    raise AssertionError(f"nothing in docker-compose.yml is mounted at {wanted}")


def unit_file() -> str:
    blocks = re.findall(r"```ini\n(.*?)```", DEPLOY_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    units = [block for block in blocks if "[Service]" in block and "[Install]" in block]
    assert len(units) == 1, "docs/deployment.md should hold one complete unit file"
    return units[0]


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_slim():
    text = DOCKERFILE.read_text(encoding="utf-8")
    built = stages(text)
    assert len(built) >= 2
    assert re.search(r"\bAS builder$", built[0][0][1], flags=re.IGNORECASE)
    image = last(built[-1], "FROM")
    for key, value in global_args(text).items():
        image = image.replace(f"${{{key}}}", value)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image
    assert any(name == "COPY" and args.startswith("--from=builder") for name, args in built[-1])


def test_dockerfile_runs_as_non_root_with_unbuffered_output():
    stage = final_stage()
    user = last(stage, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", " ".join(args for name, args in stage if name == "ENV"))


def test_dockerfile_keeps_state_on_a_volume():
    stage = final_stage()
    volumes = exec_form(last(stage, "VOLUME"))
    assert str(VOLUME) in volumes
    assert last(stage, "WORKDIR") == str(VOLUME)


def test_dockerfile_runs_the_daemon():
    stage = final_stage()
    assert exec_form(last(stage, "ENTRYPOINT")) == ["aggregator"]
    command = exec_form(last(stage, "CMD"))
    assert command[0] == "run" and "--config" in command


def test_dockerfile_healthcheck_asks_healthz_without_curl():
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"], command
    assert "http://127.0.0.1:8080/healthz" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")


def test_dockerfile_pins_or_avoids_apt_and_pip_cache():
    for name, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if name != "RUN":
            continue
        assert "apt-get install" not in args or "=" in args, args
        for install in re.findall(r"pip install[^&;]*", args):
            assert "--no-cache-dir" in install, install


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the build context should be an allowlist"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for name, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        words = args.split()
        if name in ("COPY", "ADD") and not any(word.startswith("--from") for word in words):
            for source in (word.rstrip("/") for word in words[:-1] if not word.startswith("--")):
                assert source in allowed, f"{source} is copied but left out by .dockerignore"
    for kept_out in ("data/aggregator.db", ".git/HEAD", "tests/test_cli.py", ".pytest_cache/x"):
        assert not any(fnmatch.fnmatch(kept_out, f"{path}*") for path in allowed), kept_out


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_service_builds_and_restarts():
    aggregator = service()
    assert aggregator["build"] in (".", {"context": "."})
    assert aggregator["restart"] == "unless-stopped"


def test_compose_publishes_the_exposed_port():
    exposed = {int(port.split("/")[0]) for port in last(final_stage(), "EXPOSE").split()}
    assert published_ports() == [(8080, 8080)]
    assert {container for _, container in published_ports()} == exposed


def test_compose_keeps_data_on_a_named_volume():
    named = [source for source, target, _ in mounts() if target == VOLUME]
    assert named and named[0] in compose_file()["volumes"], "/data should be a declared named volume"


def test_compose_mounts_the_config_read_only():
    config_path = config_in_container()
    read_only = [target for _, target, ro in mounts() if ro]
    assert any(config_path == target or target in config_path.parents for target in read_only)
    assert mounted_config().is_file()


def test_compose_healthcheck_is_the_dockerfiles():
    probe = service().get("healthcheck")
    if probe is not None:
        assert probe["test"] == ["CMD", *healthcheck_command()]


def test_mounted_config_listens_everywhere_and_writes_to_the_volume():
    config = load_config(mounted_config())
    assert config.server.host == "0.0.0.0"
    assert {config.server.port} == {container for _, container in published_ports()}
    for path in (config.database, config.output_dir):
        assert PurePosixPath(path).is_relative_to(VOLUME), path


def test_deploy_config_has_the_repository_feeds_and_outputs():
    deployed = tomllib.loads(mounted_config().read_text(encoding="utf-8"))
    repository = tomllib.loads((ROOT / "feeds.toml").read_text(encoding="utf-8"))
    assert deployed["feeds"] == repository["feeds"]
    assert deployed["outputs"] == repository["outputs"]


# --- the health probe, run for real against a local server -----------------------------------


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (404, False)])
def test_health_probe_exit_status(status, healthy, monkeypatch):
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = healthcheck_command()[2].replace(":8080/", f":{server.server_port}/")
        # A proxy meant for fetching feeds must not swallow the probe.
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == healthy, result.stderr.decode()


def test_health_probe_fails_when_nothing_listens():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as server:
        port = server.server_port  # closed again below: nothing listens there any more
    code = healthcheck_command()[2].replace(":8080/", f":{port}/")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode != 0


# --- the systemd unit in docs/deployment.md --------------------------------------------------


def test_unit_runs_the_daemon_as_a_dedicated_user():
    settings = unit_settings(unit_file())
    command = shlex.split(settings["ExecStart"][-1])
    assert command[0].endswith("/bin/aggregator") and "run" in command
    assert command[command.index("--config") + 1] == "/etc/aggregator/feeds.toml"
    assert settings["User"] == ["aggregator"]
    assert settings["Restart"] == ["on-failure"]


def test_unit_reloads_on_hup_and_stops_on_term():
    settings = unit_settings(unit_file())
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["TimeoutStopSec"] == ["15"]


def test_unit_is_hardened_and_writes_only_its_state():
    settings = unit_settings(unit_file())
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}.items():
        assert settings[key] == [value], key
    assert settings["WorkingDirectory"] == ["/var/lib/aggregator"]
    assert "/var/lib/aggregator" in settings["ReadWritePaths"][0].split()


def test_deployment_doc_covers_health_logs_and_listening_address():
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for needle in ("curl -s localhost:8080/healthz", "journalctl -u aggregator", "--log-format json",
                   '"0.0.0.0"', "docker compose up"):
        assert needle in text, needle


# --- the real linters, where installed (.ci/run installs hadolint and docker-compose) ----------


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not on PATH (.ci/run installs it)")
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_hadolint_is_clean():
    result = run_tool("hadolint", "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_docker_compose_accepts_the_file():
    result = run_tool("docker-compose", "-f", "docker-compose.yml", "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_systemd_accepts_the_unit(tmp_path):
    # verify wants ExecStart's program to exist: point it at a stand-in, keep everything else.
    stand_in = tmp_path / "aggregator"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "aggregator.service"
    unit.write_text(unit_file().replace("/opt/aggregator/venv/bin/aggregator", str(stand_in)))
    result = run_tool("systemd-analyze", "verify", str(unit))
    complaints = [line for line in result.stderr.splitlines() if str(unit) in line or "aggregator.service" in line]
    assert result.returncode == 0 and not complaints, result.stderr
