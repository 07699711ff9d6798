"""What an operator meets on a Pi, said clearly: sensors closed without a reader-thread traceback,
stable simulated DS18B20 serials, an unknown sensor type, a wrong gateway URL path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.buffer import FrameBuffer
from device_agent.commands import CommandRegistry
from device_agent.config import (
    ConfigError,
    DistanceSensorConfig,
    Ds18b20Sensor,
    LightSensorConfig,
    parse_config,
)
from device_agent.link import Link, LinkSettings
from device_agent.sensors import build_sensor
from device_agent.simulation import Simulation
from iotgw_common.protocol import Hello
from tests.support.gateway import GatewayProcess
from tests.support.waiting import wait_until

SMOOTHED = [
    DistanceSensorConfig(trigger_pin=23, echo_pin=24),
    LightSensorConfig(pin=18),
]


@pytest.mark.parametrize("config", SMOOTHED, ids=["distance", "light"])
def test_close_stops_the_reader_thread_before_the_device_lets_go_of_its_pins(config: Any) -> None:
    """gpiozero's DistanceSensor.close drops its trigger pin, then stops its queue thread: a reading
    in flight then died with AttributeError on the thread. The sensor must stop the thread first."""
    errors: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(5):
            factory = MockFactory()
            with Simulation([config], factory, seed=1, step=0.01) as sim:
                sim.start()
                sensor = build_sensor(sim.sensors[0], factory)
                sensor.read()  # the reader thread is measuring
                reader = sensor.device._queue  # type: ignore[attr-defined]
                close = sensor.device.close  # type: ignore[attr-defined]
                alive_at_close: list[bool] = []

                def recording_close(
                    close: Any = close, reader: Any = reader, seen: list[bool] = alive_at_close
                ) -> None:
                    seen.append(reader.is_alive())
                    close()

                sensor.device.close = recording_close  # type: ignore[attr-defined]
                sim.stop()
                sensor.close()
                assert alive_at_close == [False]
                assert not reader.is_alive()
    finally:
        threading.excepthook = hook
    assert errors == []


def test_simulated_ds18b20_serials_are_the_same_on_every_run_and_differ_between_devices() -> None:
    def serials(identity: str) -> list[str]:
        with Simulation([Ds18b20Sensor()], MockFactory(), identity=identity) as sim:
            base = Path(sim.sensors[0].base_dir)  # type: ignore[union-attr]
            return sorted(p.name for p in base.glob("28-*"))

    first = serials("pi-kitchen")
    assert len(first) == 2 and all(len(s) == 15 for s in first)
    assert serials("pi-kitchen") == first  # a restart: same metrics temp_28-..., no new series
    assert serials("pi-garage") != first


def test_an_unknown_sensor_type_lists_the_valid_ones() -> None:
    text = '[gateway]\nurl = "ws://gw:8765/v1/device"\ntoken = "t"\n\n[[sensors]]\ntype = "dht22"\n'
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    message = str(raised.value)
    assert "sensors[0].type" in message and "'dht22'" in message
    for valid in ("cpu_temperature", "ds18b20", "distance", "button"):
        assert valid in message
    actuator = text.replace(
        '[[sensors]]\ntype = "dht22"', '[[actuators]]\ntype = "lamp"\nname = "x"\npin = 5'
    )
    with pytest.raises(ConfigError, match=r"actuators\[0\]\.type.*valid types are: led, pwm_led"):
        parse_config(actuator)


def test_a_wrong_url_path_is_answered_with_the_device_endpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="device_agent.link")
    with GatewayProcess.start(tmp_path / "gw") as gw:
        token = gw.add_device("pi-test", {})
        wrong = gw.device_url.replace("/v1/device", "/device")

        async def main() -> None:
            with FrameBuffer(tmp_path / "b.sqlite3") as buffer:

                def hello() -> Hello:
                    return Hello(stream=buffer.stream, agent="iotgw-agent/test", device="pi-test")

                settings = LinkSettings(url=wrong, token=token, backoff_base=0.01, config_error_delay=60)
                task = asyncio.create_task(Link(settings, buffer, hello, CommandRegistry()).run())
                try:
                    await asyncio.to_thread(
                        wait_until,
                        lambda: any("HTTP 404" in r.getMessage() for r in caplog.records),
                        30,
                        "the link's HTTP 404 error",
                    )
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

        asyncio.run(main())
    message = next(r.getMessage() for r in caplog.records if "HTTP 404" in r.getMessage())
    assert "the gateway's device endpoint is /v1/device" in message
