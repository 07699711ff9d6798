"""device_agent.sensors (+ simulation) on gpiozero's MockFactory and temporary sysfs trees."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockChargingPin, MockFactory, MockTriggerPin

from device_agent.config import (
    ButtonSensor,
    CpuTemperatureSensor,
    DigitalInputSensor,
    DistanceSensorConfig,
    Ds18b20Sensor,
    LightSensorConfig,
    LoadAverageSensor,
    Mcp3008Sensor,
    parse_config,
)
from device_agent.sensors import (
    Button,
    DigitalInput,
    InputSensor,
    Reading,
    SensorError,
    build_sensor,
    build_sensors,
)
from device_agent.simulation import SPEED_OF_SOUND, MockMCP3008, Simulation
from iotgw_common.clock import now_ms

W1_OK = "4b 01 4b 46 7f ff 05 10 d8 : crc=d8 YES\n4b 01 4b 46 7f ff 05 10 d8 t={}\n"
W1_BAD = "4b 01 4b 46 7f ff 05 10 d8 : crc=00 NO\n4b 01 4b 46 7f ff 05 10 d8 t=85000\n"


# -- pinless sensors ---------------------------------------------------------------------


def test_cpu_temperature_reads_the_thermal_file(tmp_path: Path, mock_factory: MockFactory) -> None:
    thermal = tmp_path / "temp"
    thermal.write_text("48123\n")
    with build_sensor(CpuTemperatureSensor(sensor_file=str(thermal))) as sensor:
        assert sensor.read() == {"cpu_temp": 48.12}
        assert [(i.metric, i.unit) for i in sensor.declare()] == [("cpu_temp", "°C")]
        thermal.write_text("51000\n")
        assert sensor.read() == {"cpu_temp": 51.0}
        thermal.unlink()
        with pytest.raises(SensorError, match="no such file"):
            sensor.read()


def test_a_missing_source_is_a_failure_not_a_crash(tmp_path: Path, mock_factory: MockFactory) -> None:
    missing = tmp_path / "no-thermal"
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.42 0.30 0.20 1/100 999\n")
    sensors, failures = build_sensors(
        [
            CpuTemperatureSensor(sensor_file=str(missing)),
            LoadAverageSensor(load_average_file=str(loadavg)),
            Ds18b20Sensor(base_dir=str(tmp_path / "w1")),
        ]
    )
    try:
        assert [s.read() for s in sensors] == [{"load_1m": 0.42}]
        assert [(f.position, f.type) for f in failures] == [(0, "cpu_temperature"), (2, "ds18b20")]
        assert str(missing) in failures[0].error
        assert "no DS18B20" in failures[1].error
    finally:
        for sensor in sensors:
            sensor.close()


def test_ds18b20_discovers_every_thermometer(tmp_path: Path) -> None:
    for serial, millis in [("28-0316a27944ff", 21437), ("28-000005e2fdc3", -1250)]:
        (tmp_path / serial).mkdir()
        (tmp_path / serial / "w1_slave").write_text(W1_OK.format(millis))
    (tmp_path / "w1_bus_master1").mkdir()  # not a thermometer
    with build_sensor(Ds18b20Sensor(base_dir=str(tmp_path))) as sensor:
        assert sensor.read() == {"temp_28-000005e2fdc3": -1.25, "temp_28-0316a27944ff": 21.437}
        assert {i.metric for i in sensor.declare()} == {"temp_28-000005e2fdc3", "temp_28-0316a27944ff"}
        # one bad CRC: the other thermometer is still reported
        (tmp_path / "28-0316a27944ff" / "w1_slave").write_text(W1_BAD)
        assert sensor.read() == {"temp_28-000005e2fdc3": -1.25}
        (tmp_path / "28-000005e2fdc3" / "w1_slave").write_text(W1_BAD)
        with pytest.raises(SensorError, match="CRC"):
            sensor.read()


def test_ds18b20_by_serial_with_a_metric_name_and_the_temperature_file(tmp_path: Path) -> None:
    (tmp_path / "28-0316a27944ff").mkdir()
    (tmp_path / "28-0316a27944ff" / "temperature").write_text("19062\n")
    config = Ds18b20Sensor(serial="28-0316a27944ff", metric="water_temp", base_dir=str(tmp_path))
    with build_sensor(config) as sensor:
        assert sensor.read() == {"water_temp": 19.062}
    with pytest.raises(SensorError, match="28-0000000000aa"):
        build_sensor(Ds18b20Sensor(serial="28-0000000000aa", base_dir=str(tmp_path)))


# -- pins: MCP3008, light, distance --------------------------------------------------------------


def test_mcp3008_through_the_simulated_spi_device(mock_factory: MockFactory) -> None:
    adc = MockMCP3008(8, pin_factory=mock_factory)
    try:
        raw = build_sensor(Mcp3008Sensor(channel=2))
        moisture = build_sensor(Mcp3008Sensor(channel=5, metric="soil_moisture", scale=100.0, offset=-10.0))
        with raw, moisture:
            adc.voltages[2] = 3.3 / 4
            adc.voltages[5] = 3.3 / 2
            assert raw.read()["adc0_ch2"] == pytest.approx(0.25, abs=0.002)
            assert moisture.read()["soil_moisture"] == pytest.approx(40.0, abs=0.2)
            adc.voltages[5] = 3.3
            assert moisture.read()["soil_moisture"] == pytest.approx(90.0, abs=0.2)
    finally:
        adc.close()


def test_light_sensor_follows_the_charge_time(mock_factory: MockFactory) -> None:
    pin = mock_factory.pin(18, pin_class=MockChargingPin, charge_time=0.002)
    with build_sensor(LightSensorConfig(pin=18, charge_time_limit=0.01)) as sensor:
        bright = sensor.read()["light"]
        assert isinstance(bright, float)
        assert 0.5 < bright <= 1.0
        pin.charge_time = 0.5  # never charges within the limit: dark
        dark = 1.0
        for _ in range(40):  # the median of the last 5 samples moves within ~1 s
            dark = float(sensor.read()["light"])
            if dark == 0.0:
                break
            threading.Event().wait(0.05)
        assert dark == 0.0


def test_distance_sensor_measures_the_echo(mock_factory: MockFactory) -> None:
    echo = mock_factory.pin(24)
    mock_factory.pin(23, pin_class=MockTriggerPin, echo_pin=echo, echo_time=2 * 0.5 / SPEED_OF_SOUND)
    with build_sensor(DistanceSensorConfig(trigger_pin=23, echo_pin=24)) as sensor:
        # the mock's echo is a thread that sleeps 2.9 ms: on a busy machine it wakes late and the
        # pulse reads long (0.996 m was seen under stress-ng), never short. Poll: a wrong
        # conversion never reads 0.5 m, a late thread does once it is scheduled on time
        readings = [sensor.read()["distance_m"]]
        deadline = time.monotonic() + 30
        while readings[-1] != pytest.approx(0.5, abs=0.1) and time.monotonic() < deadline:
            time.sleep(0.05)
            readings.append(sensor.read()["distance_m"])
        assert readings[-1] == pytest.approx(0.5, abs=0.1), readings
        assert [(i.metric, i.unit) for i in sensor.declare()] == [("distance_m", "m")]


def test_distance_sensor_without_echo_is_a_clear_error(
    mock_factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("device_agent.sensors.gpio.FIRST_SAMPLE_TIMEOUT", 0.3)
    sensor = build_sensor(DistanceSensorConfig(trigger_pin=23, echo_pin=24))
    with sensor, pytest.raises(SensorError, match="no measurement"):
        sensor.read()


# -- inputs: events handed to the event loop ------------------------------------------------------


def _collect_events(
    sensor: InputSensor, actions: list[tuple[str, bool]], pin: object
) -> list[tuple[str, Reading, int]]:
    """Drive ``pin`` from another thread (as gpiozero does) and collect the events on the loop."""

    async def main() -> list[tuple[str, Reading, int]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[str, Reading, int]] = []
        done = asyncio.Event()
        callback_threads: set[int] = set()

        def on_event(name: str, data: Reading, ts: int) -> None:
            callback_threads.add(threading.get_ident())
            got.append((name, data, ts))
            if len(got) == len(actions):
                done.set()

        sensor.subscribe(loop, on_event)

        def drive() -> None:
            for method, _ in actions:
                getattr(pin, method)()

        worker = threading.Thread(target=drive)
        worker.start()
        async with asyncio.timeout(5):
            await done.wait()
        worker.join()
        assert callback_threads == {threading.get_ident()}  # ran on the loop's thread
        return got

    return asyncio.run(main())


def test_button_presses_become_events(mock_factory: MockFactory) -> None:
    before = now_ms()
    with build_sensor(ButtonSensor(pin=17, name="door", bounce_time=None)) as sensor:
        assert isinstance(sensor, Button)
        assert sensor.read() == {"door": False}
        pin = mock_factory.pin(17)
        events = _collect_events(sensor, [("drive_low", True), ("drive_high", False)], pin)
        assert [(name, data) for name, data, _ in events] == [
            ("door", {"pressed": True}),
            ("door", {"pressed": False}),
        ]
        assert all(before <= ts <= now_ms() for _, _, ts in events)
        assert [(i.metric, i.kind) for i in sensor.declare()] == [("door", "event")]


def test_digital_input_changes_become_events(mock_factory: MockFactory) -> None:
    with build_sensor(DigitalInputSensor(pin=27, name="motion")) as sensor:
        assert isinstance(sensor, DigitalInput)
        assert not sensor.polled
        pin = mock_factory.pin(27)
        events = _collect_events(sensor, [("drive_high", True), ("drive_low", False)], pin)
        assert [data for _, data, _ in events] == [{"active": True}, {"active": False}]


def test_close_is_safe_twice(mock_factory: MockFactory, tmp_path: Path) -> None:
    sensor = build_sensor(ButtonSensor(pin=5))
    sensor.close()
    sensor.close()
    # the pin is free again
    build_sensor(ButtonSensor(pin=5)).close()


# -- the simulation -------------------------------------------------------------------------------


SIMULATED = """
[gateway]
url = "ws://gw/v1/device"
token = "t"
[simulation]
enabled = true
seed = 7
[[sensors]]
type = "cpu_temperature"
[[sensors]]
type = "load_average"
[[sensors]]
type = "mcp3008"
channel = 1
[[sensors]]
type = "light"
pin = 18
[[sensors]]
type = "distance"
trigger_pin = 23
echo_pin = 24
[[sensors]]
type = "ds18b20"
[[sensors]]
type = "button"
pin = 17
name = "door"
"""


def test_simulation_drives_every_sensor_plausibly() -> None:
    config = parse_config(SIMULATED)
    factory = MockFactory()
    with Simulation(config.sensors, factory, seed=7, step=0.01, event_interval=0.02) as sim:
        sensors, failures = build_sensors(sim.sensors, factory)
        try:
            assert failures == []
            first: Reading = {}
            for sensor in sensors:
                if sensor.polled:
                    first.update(sensor.read())
            assert 30.0 < float(first["cpu_temp"]) < 80.0
            assert 0.0 < float(first["load_1m"]) < 4.0
            assert 0.05 < float(first["adc0_ch1"]) < 0.95
            assert 0.0 < float(first["light"]) <= 1.0
            assert 0.02 < float(first["distance_m"]) < 2.0
            temps = [float(v) for k, v in first.items() if k.startswith("temp_28-")]
            assert len(temps) == 2 and all(0.0 < t < 40.0 for t in temps)
            for _ in range(20):
                sim.step()
            later = sensors[0].read()
            assert later["cpu_temp"] != first["cpu_temp"]  # values drift
            # with a tiny event_interval, the button gets pressed within a few steps
            door = next(s for s in sensors if isinstance(s, Button))
            seen = set()
            for _ in range(300):  # presses last 0.1-0.8 s of real time
                sim.step()
                seen.add(door.read()["door"])
                threading.Event().wait(0.01)
                if seen == {True, False}:
                    break
            assert seen == {True, False}
        finally:
            for sensor in sensors:
                sensor.close()
    assert not sim.dir.exists()
