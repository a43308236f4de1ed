/*
 * test_http_upgrade.c - unit tests of the WebSocket opening handshake
 * (common/http_upgrade.c): RFC 6455's own example, every prefix of a
 * request waiting for more, the headers' spellings a client may use, each
 * refusal with its status, the bounds, and the answers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "http_upgrade.h"

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="          /* RFC 6455, 1.3 */
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static const char good[] =
	"GET /mqtt HTTP/1.1\r\n"
	"Host: server.example.com\r\n"
	"Upgrade: websocket\r\n"
	"Connection: Upgrade\r\n"
	"Sec-WebSocket-Key: " KEY "\r\n"
	"Origin: http://example.com\r\n"
	"Sec-WebSocket-Protocol: mqtt\r\n"
	"Sec-WebSocket-Version: 13\r\n"
	"\r\n";

static struct http_upgrade parse(const char *req, const char *path)
{
	struct http_upgrade u;

	http_upgrade_parse(req, strlen(req), 8192, path, &u);
	return u;
}

/* req with the header line `from` (up to its CRLF) replaced by `to` (may be ""). */
static const char *edit(const char *from, const char *to)
{
	static char out[4096];
	const char *at = strstr(good, from), *eol;

	assert_non_null(at);
	eol = strstr(at, "\r\n") + 2;
	snprintf(out, sizeof(out), "%.*s%s%s", (int)(at - good), good, to, eol);
	return out;
}

static void rfc_example_is_accepted(void **state)
{
	struct http_upgrade u = parse(good, "/mqtt");

	assert_int_equal(u.status, HTTP_UPGRADE_SWITCHING);
	assert_string_equal(u.accept, ACCEPT);
	assert_string_equal(u.protocol, "mqtt");
	assert_int_equal(u.length, strlen(good));
}

static void every_prefix_waits_for_more(void **state)
{
	for (size_t n = 0; n < strlen(good); n++) {
		struct http_upgrade u;

		http_upgrade_parse(good, n, 8192, "", &u);
		if (u.status != HTTP_UPGRADE_INCOMPLETE)
			fail_msg("%zu bytes: status %d", n, u.status);
	}
}

static void bytes_after_the_request_are_left_alone(void **state)
{
	char req[1024];
	struct http_upgrade u;

	snprintf(req, sizeof(req), "%s\x82\x80garbage", good);
	http_upgrade_parse(req, strlen(req), 8192, "", &u);
	assert_int_equal(u.status, HTTP_UPGRADE_SWITCHING);
	assert_int_equal(u.length, strlen(good));
}

static void header_spellings_clients_use(void **state)
{
	static const struct { const char *from, *to; } same[] = {
		{ "Upgrade:", "UPGRADE:   WebSocket  \r\n" },
		{ "Upgrade:", "upgrade: h2c, websocket\r\n" },
		{ "Connection:", "connection: keep-alive, Upgrade\r\n" },
		{ "Connection:", "Connection:keep-alive,,upgrade\r\n" },
		{ "Sec-WebSocket-Version:", "sec-websocket-version:\t13\r\n" },
		{ "Origin:", "" },
		{ "Origin:", "X-Anything:\r\n" },
	};

	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		struct http_upgrade u = parse(edit(same[i].from, same[i].to), "");

		if (u.status != HTTP_UPGRADE_SWITCHING)
			fail_msg("'%s' gave %d (%s)", same[i].to, u.status, u.why);
	}
}

static void subprotocol_is_the_clients_first_mqtt_one(void **state)
{
	struct http_upgrade u;

	u = parse(edit("Sec-WebSocket-Protocol:", "Sec-WebSocket-Protocol: chat, mqttv3.1, mqtt\r\n"), "");
	assert_int_equal(u.status, HTTP_UPGRADE_SWITCHING);
	assert_string_equal(u.protocol, "mqttv3.1");
	u = parse(edit("Sec-WebSocket-Protocol:", "Sec-WebSocket-Protocol: chat\r\n"
		       "Sec-WebSocket-Protocol: mqtt\r\n"), "");
	assert_int_equal(u.status, HTTP_UPGRADE_SWITCHING);
	assert_string_equal(u.protocol, "mqtt");
	u = parse(edit("Sec-WebSocket-Protocol:", "Sec-WebSocket-Protocol: MQTT, chat\r\n"), "");
	assert_int_equal(u.status, HTTP_UPGRADE_BAD_REQUEST);
	u = parse(edit("Sec-WebSocket-Protocol:", ""), "");
	assert_int_equal(u.status, HTTP_UPGRADE_BAD_REQUEST);
	assert_non_null(strstr(u.why, "subprotocol"));
}

static void path_is_matched_without_its_query(void **state)
{
	static const struct { const char *line, *path; int status; } cases[] = {
		{ "GET /mqtt HTTP/1.1", "/mqtt", 101 },
		{ "GET /mqtt?a=b HTTP/1.1", "/mqtt", 101 },
		{ "GET /anything/at/all HTTP/1.1", "", 101 },
		{ "GET /mqttx HTTP/1.1", "/mqtt", 404 },
		{ "GET /mqtt/ HTTP/1.1", "/mqtt", 404 },
		{ "GET / HTTP/1.1", "/mqtt", 404 },
		{ "GET /MQTT HTTP/1.1", "/mqtt", 404 },
		{ "GET http://h/mqtt HTTP/1.1", "", 400 },
		{ "GET * HTTP/1.1", "", 400 },
		{ "GET /mq\x7ftt HTTP/1.1", "", 400 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char line[128];
		struct http_upgrade u;

		snprintf(line, sizeof(line), "%s\r\n", cases[i].line);
		u = parse(edit("GET ", line), cases[i].path);
		if ((int)u.status != cases[i].status)
			fail_msg("'%s' on '%s': %d, want %d", cases[i].line, cases[i].path,
				 u.status, cases[i].status);
	}
}

static void each_refusal_has_its_status(void **state)
{
	static const struct { const char *from, *to; int status; } cases[] = {
		{ "GET ", "POST /mqtt HTTP/1.1\r\n", 405 },
		{ "GET ", "get /mqtt HTTP/1.1\r\n", 405 },
		{ "GET ", "GET /mqtt HTTP/1.0\r\n", 400 },
		{ "GET ", "GET /mqtt  HTTP/1.1\r\n", 400 },
		{ "GET ", "GET /mqtt\r\n", 400 },
		{ "Host:", "", 400 },
		{ "Upgrade:", "", 426 },
		{ "Upgrade:", "Upgrade: websocket2\r\n", 426 },
		{ "Connection:", "Connection: keep-alive\r\n", 426 },
		{ "Sec-WebSocket-Version:", "Sec-WebSocket-Version: 8\r\n", 426 },
		{ "Sec-WebSocket-Version:", "Sec-WebSocket-Version: 13, 8\r\n", 426 },
		{ "Sec-WebSocket-Version:", "", 426 },
		{ "Sec-WebSocket-Key:", "", 400 },
		{ "Sec-WebSocket-Key:", "Sec-WebSocket-Key: c2hvcnQ=\r\n", 400 },
		{ "Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n", 400 },
		{ "Sec-WebSocket-Key:", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==\r\n", 400 },
		{ "Sec-WebSocket-Key:", "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Key: " KEY "\r\n", 400 },
		{ "Origin:", " folded: line\r\n", 400 },
		{ "Origin:", "no colon here\r\n", 400 },
		{ "Origin:", ": no name\r\n", 400 },
		{ "Origin:", "Bad Name: x\r\n", 400 },
		{ "Origin:", "X: a\nb\r\n", 400 },
		{ "Origin:", "X: a\x01b\r\n", 400 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct http_upgrade u = parse(edit(cases[i].from, cases[i].to), "");

		if ((int)u.status != cases[i].status)
			fail_msg("'%s': %d, want %d", cases[i].to, u.status, cases[i].status);
		assert_non_null(u.why);
	}
}

static void nul_and_bare_line_feeds_are_refused(void **state)
{
	char req[1024];
	struct http_upgrade u;
	size_t n = strlen(good);

	memcpy(req, good, n);
	req[30] = '\0';
	http_upgrade_parse(req, n, 8192, "", &u);
	assert_int_equal(u.status, HTTP_UPGRADE_BAD_REQUEST);
	u = parse("GET /mqtt HTTP/1.1\nHost: x\n\r\n\r\n", "");
	assert_int_equal(u.status, HTTP_UPGRADE_BAD_REQUEST);
}

static void bounds_of_size_and_header_count(void **state)
{
	char req[16384], lines[8192];
	struct http_upgrade u;
	size_t n = 0;

	/* max_len bytes without the empty line: refused; one short of it: waiting. */
	http_upgrade_parse(good, 100, 100, "", &u);
	assert_int_equal(u.status, HTTP_UPGRADE_TOO_LARGE);
	http_upgrade_parse(good, 99, 100, "", &u);
	assert_int_equal(u.status, HTTP_UPGRADE_INCOMPLETE);
	/* A whole request longer than max_len: its end is not looked for past the bound. */
	http_upgrade_parse(good, strlen(good), strlen(good) - 1, "", &u);
	assert_int_equal(u.status, HTTP_UPGRADE_TOO_LARGE);
	http_upgrade_parse(good, strlen(good), strlen(good), "", &u);
	assert_int_equal(u.status, HTTP_UPGRADE_SWITCHING);
	/* HTTP_UPGRADE_MAX_HEADERS header lines in all, and one more. */
	for (int i = 0; i < HTTP_UPGRADE_MAX_HEADERS - 7; i++)
		n += (size_t)snprintf(lines + n, sizeof(lines) - n, "X-%d: y\r\n", i);
	snprintf(req, sizeof(req), "%.*s%s\r\n", (int)strlen(good) - 2, good, lines);
	u = parse(req, "");
	assert_int_equal(u.status, HTTP_UPGRADE_SWITCHING);
	snprintf(req, sizeof(req), "%.*s%sX-last: y\r\n\r\n", (int)strlen(good) - 2, good, lines);
	u = parse(req, "");
	assert_int_equal(u.status, HTTP_UPGRADE_TOO_LARGE);
}

static void answers(void **state)
{
	struct http_upgrade u = parse(good, "");
	char out[256];
	size_t n = http_upgrade_response(&u, out, sizeof(out));

	assert_int_equal(n, strlen(out));
	assert_string_equal(out, "HTTP/1.1 101 Switching Protocols\r\n"
			    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
			    "Sec-WebSocket-Accept: " ACCEPT "\r\n"
			    "Sec-WebSocket-Protocol: mqtt\r\n\r\n");
	u = parse(edit("Sec-WebSocket-Version:", "Sec-WebSocket-Version: 8\r\n"), "");
	assert_true(http_upgrade_response(&u, out, sizeof(out)) > 0);
	assert_true(strncmp(out, "HTTP/1.1 426 Upgrade Required\r\n", 31) == 0);
	assert_non_null(strstr(out, "\r\nSec-WebSocket-Version: 13\r\n"));
	assert_non_null(strstr(out, "\r\nConnection: close\r\n"));
	u = parse(edit("GET ", "GET /x HTTP/1.1\r\n"), "/mqtt");
	assert_true(http_upgrade_response(&u, out, sizeof(out)) > 0);
	assert_true(strncmp(out, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
	assert_int_equal(http_upgrade_response(&u, out, 20), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rfc_example_is_accepted),
		cmocka_unit_test(every_prefix_waits_for_more),
		cmocka_unit_test(bytes_after_the_request_are_left_alone),
		cmocka_unit_test(header_spellings_clients_use),
		cmocka_unit_test(subprotocol_is_the_clients_first_mqtt_one),
		cmocka_unit_test(path_is_matched_without_its_query),
		cmocka_unit_test(each_refusal_has_its_status),
		cmocka_unit_test(nul_and_bare_line_feeds_are_refused),
		cmocka_unit_test(bounds_of_size_and_header_count),
		cmocka_unit_test(answers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
