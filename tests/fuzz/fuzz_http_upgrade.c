/*
 * fuzz_http_upgrade.c - libFuzzer harness for the WebSocket opening
 * handshake's reader (common/http_upgrade.c).
 *
 * The first byte picks the path served (bit 0: "/mqtt" or any) and the
 * size bound (the other bits: 64 to 8,192 bytes); the rest is the request.
 * Whatever it is: a request not yet whole says so only while its empty
 * line is not within the bound; a whole one ends with that empty line
 * within both the input and the bound; an accepted one has a 28-character
 * accept key and one of the two MQTT subprotocols; every answer fits
 * 256 bytes and says its status.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_upgrade.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct http_upgrade u;
	const char *path;
	size_t max, n;
	char resp[256], status[16];

	if (size < 1)
		return 0;
	path = data[0] & 1 ? "/mqtt" : "";
	max = 64 + (size_t)(data[0] >> 1) * 64;
	data++;
	size--;
	http_upgrade_parse((const char *)data, size, max, path, &u);
	if (u.status == HTTP_UPGRADE_INCOMPLETE) {
		if (size >= max || memmem(data, min_size(size, max), "\r\n\r\n", 4) != NULL)
			abort();
		return 0;
	}
	if (u.status != HTTP_UPGRADE_TOO_LARGE &&
	    (u.length < 4 || u.length > min_size(size, max) ||
	     memcmp(data + u.length - 4, "\r\n\r\n", 4) != 0))
		abort();
	if (u.status == HTTP_UPGRADE_SWITCHING) {
		if (strlen(u.accept) != HTTP_UPGRADE_ACCEPT_LEN || u.protocol == NULL ||
		    (strcmp(u.protocol, "mqtt") != 0 && strcmp(u.protocol, "mqttv3.1") != 0))
			abort();
	} else if (u.why == NULL) {
		abort();
	}
	n = http_upgrade_response(&u, resp, sizeof(resp));
	snprintf(status, sizeof(status), "HTTP/1.1 %d ", (int)u.status);
	if (n == 0 || n != strlen(resp) || strncmp(resp, status, strlen(status)) != 0)
		abort();
	return 0;
}
