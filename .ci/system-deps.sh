#!/usr/bin/env bash
# Debian / Raspberry Pi OS packages the gateway, the demo and the test suite use.
# Run as root (or with sudo). Safe to run again: apt skips what is installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
  python3 python3-venv python3-dev gcc make  # the virtualenv, and wheels that compile
  sqlite3                                    # to look into the store by hand (README)
  procps                                     # ps/pkill used by a few tests
  openssl                                    # a throwaway TLS certificate for the firmware wss:// test
  faketime                                   # the firmware's board clock starting at 2000-01-01 (tests/firmware/test_memory.py)
  dnsmasq-base                               # a real DNS server for the firmware's non-blocking resolver (tests/firmware/test_network.py)
  mosquitto                                  # the MQTT broker (tests/mqtt/, make demo, bench/)
  systemd                                    # systemd-analyze verify/security on the units (tests/install)
  influxdb victoria-metrics                  # InfluxDB 1.x (v1 /write) and a v2-write-API server, for tests/influx
  chromium chromium-driver                   # the live web page, tested in a real headless browser
  prometheus                                 # promtool: check and unit-test docs/alerting/ (tests/gateway/test_alerting.py)
  rabbitmq-server                            # a 2-node clustered MQTT broker (rabbitmq_mqtt) for the gateway fleet tests
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
