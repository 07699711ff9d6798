"""The MQTT plane (docs/mqtt.md): the bridge to a broker, paho-mqtt driven by the event loop.

``client``     MqttConnection: one supervised connection, no paho thread
``topics``     the topic scheme under ``<prefix>/<gateway>/``
``sink``       MqttSink: the delivery engine's second sink (readings, events, latest state)
``discovery``  Home Assistant discovery configs from a device's ``hello``
``bridge``     MqttBridge: wires them, presence and retained state; commands over MQTT live in
               the operator plane (``gateway.operator.mqtt_commands``), which needs the command service
"""
