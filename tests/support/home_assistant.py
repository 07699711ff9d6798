"""A real Home Assistant core for tests, in its own venv (``make ha-venv`` builds ``.venv-ha``).

with HomeAssistant.start(tmp_path / "ha", broker) as ha:
    ha.state("sensor.some_entity")                       # GET /api/states/<id>, None if unknown
    ha.call("switch", "turn_on", entity_id="switch.x")   # POST /api/services/switch/turn_on
    ha.template("{{ device_attr('sensor.x', 'model') }}")

``hass -c CONFIG --skip-pip`` with a minimal ``configuration.yaml`` (``http`` on a free loopback
port, ``api``, no ``default_config``; Home Assistant 2024.3 still sets up its always-on
integrations such as the frontend, whose requirements ``make ha-venv`` installs, so nothing is
pip-installed at startup). The MQTT integration exists only as a config entry since 2022: it is
written into ``.storage/core.config_entries`` before the start, pointing at the test broker. The
API token comes from Home Assistant's own onboarding API (create the owner, exchange the auth
code at ``/auth/token``). A missing ``.venv-ha`` raises ServiceMissing, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.services import Mosquitto, ServiceMissing, free_port, http

REPO = Path(__file__).resolve().parents[2]
HASS = REPO / ".venv-ha" / "bin" / "hass"
VERSION = "2024.3.3"


def entity_slug(text: str) -> str:
    """Home Assistant's ``slugify`` for the ASCII names the gateway uses (an entity id's object part)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class HomeAssistant:
    """``hass`` with its configuration directory under ``directory``."""

    def __init__(self, directory: Path, broker: Mosquitto, discovery_prefix: str = "homeassistant") -> None:
        if not HASS.exists():
            raise ServiceMissing(
                f"{HASS} is missing: `make ha-venv` installs Home Assistant {VERSION} into .venv-ha"
            )
        self.directory = Path(directory)
        self.config_dir = self.directory / "config"
        self.log_path = self.directory / "home-assistant.log"
        self.port = free_port()
        self.broker = broker
        self.discovery_prefix = discovery_prefix
        self.token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, broker: Mosquitto, discovery_prefix: str = "homeassistant",
              timeout: float = 240.0) -> Iterator[HomeAssistant]:  # fmt: skip
        ha = cls(directory, broker, discovery_prefix)
        try:
            ha.launch(timeout)
            yield ha
        finally:
            ha.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        storage = self.config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            "homeassistant:\n"
            "  name: iotgw test\n"
            "  unit_system: metric\n"
            "  time_zone: UTC\n"
            "  latitude: 0\n"
            "  longitude: 0\n"
            "  elevation: 0\n"
            "  country: DE\n"
            "http:\n"
            "  server_host: 127.0.0.1\n"
            f"  server_port: {self.port}\n"
            "api:\n"
            "logger:\n"
            "  default: warning\n"
            "  logs:\n"
            "    homeassistant.components.mqtt: debug\n"
        )
        entry = {
            "entry_id": "iotgwtestmqttentry0000000000000",
            "version": 1,
            "minor_version": 1,
            "domain": "mqtt",
            "title": f"127.0.0.1:{self.broker.port}",
            "data": {
                "broker": "127.0.0.1",
                "port": self.broker.port,
                "discovery": True,
                "discovery_prefix": self.discovery_prefix,
            },
            "options": {},
            "pref_disable_new_entities": False,
            "pref_disable_polling": False,
            "source": "user",
            "unique_id": None,
            "disabled_by": None,
        }
        (storage / "core.config_entries").write_text(
            json.dumps(
                {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}
            )
        )

    def launch(self, timeout: float = 240.0) -> None:
        """Start ``hass`` and wait until its API answers with a token (onboarding on the first start)."""
        assert self.proc is None or self.proc.poll() is not None, "Home Assistant already running"
        self.proc = subprocess.Popen(
            [str(HASS), "-c", str(self.config_dir), "--skip-pip", "--log-no-color",
             "--log-file", str(self.log_path)],
            cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Home Assistant exited with {self.proc.returncode}:\n{self.log()[-5000:]}"
                )
            if "Activating recovery mode" in self.log():  # an integration it needs failed: never ready
                self.stop()
                raise RuntimeError(f"Home Assistant started in recovery mode:\n{self.errors()}")
            with contextlib.suppress(OSError):
                if not self.token:
                    self._onboard()
                if self.token and self._get("/api/")[0] == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Home Assistant not ready after {timeout}s:\n{self.log()[-5000:]}")

    def _onboard(self) -> None:
        """Create the owner through the onboarding API and keep an access token; raises OSError early."""
        status, body = http("GET", f"{self.url}/api/onboarding", timeout=5)
        if status >= 500:
            raise RuntimeError(f"GET /api/onboarding: HTTP {status}:\n{self.errors()}")
        if status != 200:
            return  # not up yet
        if not any(step["step"] == "user" and not step["done"] for step in json.loads(body)):
            raise RuntimeError("Home Assistant is already onboarded: a stale config directory?")
        client_id = f"{self.url}/"
        user = json.dumps({"client_id": client_id, "name": "iotgw", "username": "iotgw",
                           "password": "iotgw-test-password", "language": "en"}).encode()  # fmt: skip
        status, body = http("POST", f"{self.url}/api/onboarding/users", user,
                            {"Content-Type": "application/json"}, timeout=60)  # fmt: skip
        if status != 200:
            raise RuntimeError(f"onboarding: HTTP {status}: {body[:500]!r}")
        code = json.loads(body)["auth_code"]
        form = urllib.parse.urlencode(
            {"grant_type": "authorization_code", "code": code, "client_id": client_id}
        )
        status, body = http("POST", f"{self.url}/auth/token", form.encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)  # fmt: skip
        if status != 200:
            raise RuntimeError(f"/auth/token: HTTP {status}: {body[:500]!r}")
        self.token = json.loads(body)["access_token"]

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait (SIGKILL past ``timeout``); safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def errors(self) -> str:
        """The log's ERROR lines (without their tracebacks)."""
        return "\n".join(line for line in self.log().splitlines() if " ERROR " in line)

    def complaints(self, logger: str) -> list[str]:
        """WARNING and ERROR lines of ``logger`` and its children (``homeassistant.components.mqtt``)."""
        return [
            line for line in self.log().splitlines()
            if (" WARNING " in line or " ERROR " in line) and f"[{logger}" in line
        ]  # fmt: skip

    # -- the REST API ---------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def _get(self, path: str) -> tuple[int, bytes]:
        return http("GET", f"{self.url}{path}", headers=self._headers(), timeout=30)

    def states(self) -> list[dict[str, Any]]:
        """``GET /api/states``: every entity's state object."""
        status, body = self._get("/api/states")
        assert status == 200, (status, body[:500])
        states: list[dict[str, Any]] = json.loads(body)
        return states

    def state(self, entity_id: str) -> dict[str, Any] | None:
        """``GET /api/states/<entity_id>``: the state object, None while Home Assistant has no such entity."""
        status, body = self._get(f"/api/states/{entity_id}")
        if status == 404:
            return None
        assert status == 200, (status, body[:500])
        state: dict[str, Any] = json.loads(body)
        return state

    def call(self, domain: str, service: str, **data: Any) -> list[dict[str, Any]]:
        """``POST /api/services/<domain>/<service>``: the states that changed while it ran."""
        status, body = http("POST", f"{self.url}/api/services/{domain}/{service}", json.dumps(data).encode(),
                            self._headers(), timeout=30)  # fmt: skip
        assert status == 200, (status, body[:500])
        changed: list[dict[str, Any]] = json.loads(body)
        return changed

    def template(self, template: str) -> str:
        """``POST /api/template``: ``template`` rendered by Home Assistant (device and area lookups)."""
        status, body = http("POST", f"{self.url}/api/template", json.dumps({"template": template}).encode(),
                            self._headers(), timeout=30)  # fmt: skip
        assert status == 200, (status, body[:500])
        return body.decode()
