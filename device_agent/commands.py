"""Command handling of the agent: a registry of named handlers, answered with ``result``.

docs/commands.md is the contract. A handler is registered with::

    registry.register("ping", handler, description="answer pong", args={...})

where ``handler(args) -> value`` is an async callable. Registered commands are
declared in ``hello.commands``; anything else is answered ``ok=false`` with
``unknown command: NAME``, and a command whose ``deadline`` has passed with
``deadline passed before the command ran``, without running it. At most one run
per command name at a time: a command arriving while another of the same name
runs is answered ``ok=false`` with ``NAME is already running`` and not started
(docs/commands.md, section 5). How a handler's exception becomes the ``error``:

* :class:`BadArguments` (and the actuators' ``ActuatorError``): ``bad arguments: ...``;
* :class:`CommandFailed`: its message, and its ``value`` (a program's output) too;
* anything else (a bug, an I/O error): ``NAME failed: ExceptionType: message``, logged with its traceback.

:func:`register_builtins` adds ``ping``, ``read_now``, ``set_interval`` and, with
actuators configured, ``set``, ``toggle`` and ``blink``; :func:`register_custom`
adds the config's ``[[commands]]``: fixed programs run without a shell, with a
timeout, their output captured and returned. Handlers that block run in worker
threads (actuators) or subprocesses (programs), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from device_agent.actuators import Actuator, ActuatorError, Actuators
from device_agent.config import BUILTIN_COMMANDS, CustomCommand
from iotgw_common import clock
from iotgw_common.protocol import Command, CommandInfo, Result
from iotgw_common.protocol.messages import MAX_STRING_LENGTH

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
ACTUATOR_ARGS = {
    "set": ("target", "value"),
    "toggle": ("target",),
    "blink": ("target", "on_time", "off_time", "n"),
}
"""The arguments of the actuator commands, as the agent and the firmware list them
(docs/commands.md, "Actuators: one vocabulary")."""
OUTPUT_CHARS = 4000
"""Most characters of a program's stdout and of its stderr returned in a result (the end is kept)."""


class BadArguments(ValueError):
    """The command's ``args`` are missing, unknown or of the wrong type; the message says which."""


class CommandFailed(RuntimeError):
    """The command ran and failed; ``value`` (optional) goes back with the error."""

    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


class CommandRegistry:
    """Named command handlers; :meth:`handle` turns a ``command`` into its ``result``."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, CommandInfo]] = {}
        self._running: set[str] = set()  # names with a run in progress (one at a time per name)

    def register(
        self, name: str, handler: Handler, *, description: str = "", args: dict[str, str] | None = None
    ) -> None:
        """Accept command ``name``; ``args`` maps argument names to a short description."""
        self._handlers[name] = (handler, CommandInfo(name=name, description=description, args=args or {}))

    def declare(self) -> list[CommandInfo]:
        """What to put in ``hello.commands``."""
        return [info for _, info in self._handlers.values()]

    async def handle(self, command: Command, *, now_ms: int | None = None) -> Result:
        """Run ``command`` and return the ``result`` to send; never raises (but CancelledError).

        Call it from one event loop (the link runs each command in its own task); a second
        command of a name whose run is still in progress is refused, not queued.
        """
        now = clock.now_ms() if now_ms is None else now_ms
        if command.deadline and now > command.deadline:
            return Result(id=command.id, ok=False, error="deadline passed before the command ran")
        entry = self._handlers.get(command.name)
        if entry is None:
            log.info("command %s %r refused: unknown command", command.id, command.name)
            return Result(id=command.id, ok=False, error=_short(f"unknown command: {command.name}"))
        if command.name in self._running:
            log.info("command %s %r refused: already running", command.id, command.name)
            return Result(id=command.id, ok=False, error=_short(f"{command.name} is already running"))
        handler, _ = entry
        self._running.add(command.name)
        try:
            value = await handler(command.args)
        except (BadArguments, ActuatorError) as exc:
            log.info("command %s %r refused: %s", command.id, command.name, exc)
            return Result(id=command.id, ok=False, error=_short(f"bad arguments: {exc}"))
        except CommandFailed as exc:
            log.info("command %s %r failed: %s", command.id, command.name, exc)
            return Result(id=command.id, ok=False, value=exc.value, error=_short(str(exc)))
        except Exception as exc:
            log.warning("command %s %r raised", command.id, command.name, exc_info=True)
            text = f"{command.name} failed: {type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Result(id=command.id, ok=False, error=_short(text))
        finally:
            self._running.discard(command.name)
        return Result(id=command.id, ok=True, value=value)


def _short(text: str) -> str:
    return text[:MAX_STRING_LENGTH]


# -- arguments ------------------------------------------------------------------------------


def check_args(
    args: dict[str, Any],
    command: str,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    *,
    order: tuple[str, ...] | None = None,
) -> None:
    """Raise BadArguments for a missing required or an unknown argument (``order``: how to list
    the accepted ones; required, then optional by default)."""
    accepted = order or (*required, *optional)
    for key in args:
        if key not in accepted:
            raise BadArguments(
                f"unknown argument {key!r}; {command} accepts: {', '.join(accepted) or 'no arguments'}"
            )
    for key in required:
        if key not in args:
            raise BadArguments(f"missing argument {key!r}; {command} needs: {', '.join(required)}")


def number_arg(args: dict[str, Any], key: str, default: float | None, low: float, high: float) -> float:
    """``args[key]`` as a finite number in [low, high] (numeric strings accepted); BadArguments otherwise."""
    raw = args.get(key, default)
    if raw is None:
        raise BadArguments(f"missing argument {key!r}")
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise BadArguments(f"{key} must be a number from {low:g} to {high:g}, not {raw!r}")
    return value


# -- built-in commands ------------------------------------------------------------------------


def register_builtins(
    registry: CommandRegistry,
    *,
    read_now: Callable[[], Awaitable[dict[str, Any]]],
    get_interval: Callable[[], float],
    set_interval: Callable[[float], None],
    actuators: Actuators,
) -> None:
    """Register ``ping``, ``read_now``, ``set_interval``, and ``set``/``toggle``/``blink`` when
    there are actuators. ``read_now`` samples every polled sensor, buffers and sends the sample."""
    started = time.monotonic()

    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, "ping", ())
        states = await asyncio.to_thread(actuators.states)
        return {
            "pong": True,
            "time_ms": clock.now_ms(),
            "uptime_s": round(time.monotonic() - started, 3),
            "interval_s": get_interval(),
            "actuators": states,
        }

    async def read(args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, "read_now", ())
        ts = clock.now_ms()
        values = await read_now()
        return {"ts": ts, "values": values}

    async def interval(args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, "set_interval", ("seconds",))
        seconds = number_arg(args, "seconds", None, 0.05, 86_400)
        previous = get_interval()
        set_interval(seconds)
        return {"interval_s": seconds, "previous_s": previous}

    registry.register("ping", ping, description="answer pong, with the agent's clock and actuator states")
    registry.register("read_now", read, description="sample every sensor now and send the readings")
    registry.register(
        "set_interval",
        interval,
        description="change the sampling interval until the agent restarts or the gateway sets one",
        args={"seconds": "number, 0.05..86400"},
    )
    if not actuators.by_name:
        return
    names = ", ".join(sorted(actuators.by_name))
    only = len(actuators.by_name) == 1

    def target(args: dict[str, Any], command: str) -> tuple[Actuator, dict[str, Any]]:
        """The actuator ``args`` name and the args (``output`` renamed ``target``), once checked
        as the firmware checks them, word for word (tests/vectors/actuators.json)."""
        if "output" in args:  # the board firmware's old name for target, accepted on both
            if "target" in args:
                raise BadArguments("give target or output (its old name), not both")
            args = {**args, "target": args["output"]}
            del args["output"]
        accepted = ACTUATOR_ARGS[command]
        needed = accepted[: 2 if command == "set" else 1][1 if only else 0 :]
        check_args(args, command, needed, tuple(a for a in accepted if a not in needed), order=accepted)
        return actuators.get(args.get("target", next(iter(actuators.by_name)) if only else None)), args

    async def set_(args: dict[str, Any]) -> dict[str, Any]:
        actuator, args = target(args, "set")
        return await asyncio.to_thread(actuator.set, args["value"])

    async def toggle(args: dict[str, Any]) -> dict[str, Any]:
        actuator, _ = target(args, "toggle")
        return await asyncio.to_thread(actuator.toggle)

    async def blink(args: dict[str, Any]) -> dict[str, Any]:
        actuator, args = target(args, "blink")
        on_time = number_arg(args, "on_time", 0.5, 0.01, 3600)
        off_time = number_arg(args, "off_time", 0.5, 0.01, 3600)
        n = number_arg(args, "n", 3, 0, 100_000)
        if n != int(n):
            raise BadArguments(f"n must be a whole number, not {args['n']!r}")
        return await asyncio.to_thread(actuator.blink, on_time, off_time, int(n) or None)

    target_help = f"actuator: {names}"[:MAX_STRING_LENGTH]
    registry.register(
        "set",
        set_,
        description="set an actuator: on/off for led, output, buzzer; 0..1 for pwm_led; -1..1 for servo",
        args={"target": target_help, "value": "on/off, true/false, 1/0, or a number 0..1 (servo -1..1)"},
    )
    registry.register("toggle", toggle, description="invert an on/off actuator", args={"target": target_help})
    registry.register(
        "blink",
        blink,
        description="blink an LED or output, beep a buzzer, in the background; set/toggle stops it",
        args={
            "target": target_help,
            "on_time": "seconds on (0.5)",
            "off_time": "seconds off (0.5)",
            "n": "times (3); 0: until the next set or toggle",
        },
    )


# -- custom commands ------------------------------------------------------------------------


def register_custom(registry: CommandRegistry, commands: list[CustomCommand]) -> None:
    """Register each ``[[commands]]`` entry: its fixed ``argv``, no shell, no arguments accepted."""
    for command in commands:
        if command.name in BUILTIN_COMMANDS:
            raise ValueError(f"{command.name!r} is a built-in command")
        registry.register(
            command.name,
            _program(command),
            description=command.description
            or f"run {os.path.basename(command.argv[0])} (timeout {command.timeout:g} s)",
        )


def _program(command: CustomCommand) -> Handler:
    async def run(args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, command.name, ())
        return await run_program(command.argv, command.timeout)

    return run


async def run_program(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run ``argv`` (no shell) in its own process group; ``{exit_code, stdout, stderr}``.

    A non-zero exit raises CommandFailed carrying that value; a timeout kills the
    whole process group and raises CommandFailed. Output is decoded as UTF-8
    (replacing bad bytes) and only the last OUTPUT_CHARS of each stream are kept.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise CommandFailed(
                f"{os.path.basename(argv[0])} did not finish within {timeout:g} s; killed"
            ) from None
        raise
    stdout, stderr = _tail(out), _tail(err)
    value = {"exit_code": proc.returncode, "stdout": stdout, "stderr": stderr}
    if proc.returncode != 0:
        last = (stderr or stdout).strip().splitlines()
        reason = f": {last[-1]}" if last else ""
        raise CommandFailed(f"{os.path.basename(argv[0])} exited with code {proc.returncode}{reason}", value)
    return value


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= OUTPUT_CHARS else "…" + text[-(OUTPUT_CHARS - 1) :]


__all__ = [
    "OUTPUT_CHARS",
    "BadArguments",
    "CommandFailed",
    "CommandRegistry",
    "Handler",
    "check_args",
    "number_arg",
    "register_builtins",
    "register_custom",
    "run_program",
]
