#!/bin/sh
# contrib/dev.sh - set up, build and run iotd, or run every test, on a
# fresh Debian 12 machine.
#
#   contrib/dev.sh run     install what is missing (and mosquitto-clients), build, run on 127.0.0.1:1883
#   contrib/dev.sh test    install what is missing, build, run every test
#   contrib/dev.sh deps    only install what is missing
#
# Packages are installed with apt-get only when missing (root or sudo).
set -eu

cd "$(dirname "$0")/.."
# Development and CI builds treat every warning as an error (Makefile).
export WERROR=1

BUILD_PKGS="build-essential pkg-config libconfuse-dev libsystemd-dev uthash-dev liblmdb-dev libseccomp-dev libssl-dev libargon2-dev libwslay-dev"
# chromium and npm: the browser test (tests/e2e/test_websocket.py) runs MQTT.js in headless Chromium.
TEST_PKGS="libcmocka-dev clang libclang-rt-14-dev llvm-14 python3 python3-pytest python3-paho-mqtt python3-jwt python3-cryptography openssl mosquitto-clients mosquitto procps systemd systemd-container debootstrap gdb chromium"
# MQTT.js for that test, from the npm registry, under the build directory.
MQTTJS_DIR=build/npm

missing() {
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			printf '%s ' "$p"
	done
}

install_missing() {
	need=$(missing "$@")
	[ -z "$need" ] && return 0
	echo "installing: $need"
	sudo=""
	[ "$(id -u)" -ne 0 ] && sudo="sudo"
	$sudo apt-get update -qq
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need
}

# npm itself only when no npm is there (a Node.js from elsewhere brings its own).
install_test_deps() {
	# shellcheck disable=SC2086
	install_missing $BUILD_PKGS $TEST_PKGS
	command -v npm >/dev/null || install_missing npm
	[ -f "$MQTTJS_DIR/node_modules/mqtt/dist/mqtt.min.js" ] ||
		npm install --no-audit --no-fund --prefix "$MQTTJS_DIR" mqtt@5
}

case "${1:-run}" in
deps)
	install_test_deps
	;;
run)
	# mosquitto-clients: the quick start's mosquitto_sub and mosquitto_pub.
	install_missing $BUILD_PKGS mosquitto-clients
	make -j"$(nproc)"
	shift || true
	# /etc/iotd/iotd.conf when installed, built-in defaults (127.0.0.1:1883) otherwise.
	exec build/iotd "$@"
	;;
test)
	install_test_deps
	make -j"$(nproc)" all
	make test
	;;
*)
	echo "usage: $0 run|test|deps" >&2
	exit 2
	;;
esac
