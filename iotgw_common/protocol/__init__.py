"""Device protocol v1: typed messages, error and close codes, and the sans-I/O codec.

Shared by the gateway and the Python agent; importing it pulls in msgspec only.
"""

from iotgw_common.protocol.codec import (
    check_clock,
    decode_device_message,
    decode_gateway_message,
    encode,
    encode_text,
)
from iotgw_common.protocol.errors import (
    CLOSE_EXPLANATIONS,
    ERROR_EXPLANATIONS,
    CloseCode,
    ErrorCode,
    ProtocolError,
    printable,
)
from iotgw_common.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Command,
    CommandInfo,
    DeviceMessage,
    Error,
    Event,
    GatewayMessage,
    Hello,
    Readings,
    Result,
    Sample,
    SensorInfo,
    Status,
    Welcome,
)

__all__ = [
    "CLOSE_EXPLANATIONS",
    "ERROR_EXPLANATIONS",
    "PROTOCOL_VERSION",
    "Ack",
    "CloseCode",
    "Command",
    "CommandInfo",
    "DeviceMessage",
    "Error",
    "ErrorCode",
    "Event",
    "GatewayMessage",
    "Hello",
    "ProtocolError",
    "Readings",
    "Result",
    "Sample",
    "SensorInfo",
    "Status",
    "Welcome",
    "check_clock",
    "decode_device_message",
    "decode_gateway_message",
    "encode",
    "encode_text",
    "printable",
]
