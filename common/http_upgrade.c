/*
 * http_upgrade.c - a WebSocket opening handshake (RFC 6455, 4.2.1): the
 * client's HTTP/1.1 upgrade request read and checked, and the server's
 * answer (http_upgrade.h).
 *
 * Client bytes, so bounded: nothing is looked at past max_len bytes or
 * HTTP_UPGRADE_MAX_HEADERS header lines, nothing is copied or allocated.
 * Only what the handshake needs is read: the request line, Host, Upgrade,
 * Connection, Sec-WebSocket-Version, Sec-WebSocket-Key and
 * Sec-WebSocket-Protocol; other headers are skipped. The accept key is
 * SHA-1 (OpenSSL's libcrypto) under base64 (common/b64.c).
 */
#include "http_upgrade.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "b64.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_LEN 24                 /* base64 of 16 bytes */

/* What the headers said, as they are read. */
struct seen {
	bool host, upgrade, connection, version, key, key_twice;
	const char *key_at;               /* its 24 characters */
	const char *protocol;             /* the first MQTT subprotocol offered */
	int protocol_rank;                /* its place in the client's list, for the first */
};

/* A view of part of the request. */
struct span {
	const char *p;
	size_t n;
};

static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static struct span trim(struct span s)
{
	while (s.n > 0 && (s.p[0] == ' ' || s.p[0] == '\t')) {
		s.p++;
		s.n--;
	}
	while (s.n > 0 && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t'))
		s.n--;
	return s;
}

static bool span_is(struct span s, const char *word)
{
	return s.n == strlen(word) && strncasecmp(s.p, word, s.n) == 0;
}

/* Does a comma-separated list (Upgrade, Connection) have `word`, in any case? */
static bool list_has(struct span v, const char *word)
{
	while (v.n > 0) {
		const char *comma = memchr(v.p, ',', v.n);
		size_t n = comma ? (size_t)(comma - v.p) : v.n;

		if (span_is(trim((struct span){ v.p, n }), word))
			return true;
		v.p += n + (comma != NULL);
		v.n -= n + (comma != NULL);
	}
	return false;
}

/* The first subprotocol of the client's list that is MQTT's. */
static void pick_protocol(struct span v, struct seen *s)
{
	static const char *const mqtt[] = { "mqtt", "mqttv3.1" };

	while (v.n > 0 && s->protocol == NULL) {
		const char *comma = memchr(v.p, ',', v.n);
		size_t n = comma ? (size_t)(comma - v.p) : v.n;
		struct span one = trim((struct span){ v.p, n });

		for (size_t i = 0; i < sizeof(mqtt) / sizeof(mqtt[0]); i++)
			if (one.n == strlen(mqtt[i]) && memcmp(one.p, mqtt[i], one.n) == 0)
				s->protocol = mqtt[i];
		v.p += n + (comma != NULL);
		v.n -= n + (comma != NULL);
	}
}

static bool key_ok(struct span v)
{
	uint8_t raw[18];

	return v.n == WS_KEY_LEN && b64_decode(B64_STD, v.p, v.n, raw, sizeof(raw)) == 16;
}

/* One header line (without its CRLF). Returns NULL, or what is wrong with it. */
static const char *header(struct span line, struct seen *s)
{
	const char *colon = memchr(line.p, ':', line.n);
	struct span name, value;

	if (line.n > 0 && (line.p[0] == ' ' || line.p[0] == '\t'))
		return "folded header line";
	if (colon == NULL || colon == line.p)
		return "header line without a name";
	name = (struct span){ line.p, (size_t)(colon - line.p) };
	for (size_t i = 0; i < name.n; i++)
		if (!is_tchar((unsigned char)name.p[i]))
			return "bad header name";
	value = trim((struct span){ colon + 1, line.n - name.n - 1 });
	for (size_t i = 0; i < value.n; i++)
		if ((unsigned char)value.p[i] < ' ' && value.p[i] != '\t')
			return "control character in a header";
	if (span_is(name, "Host")) {
		s->host = true;
	} else if (span_is(name, "Upgrade")) {
		s->upgrade |= list_has(value, "websocket");
	} else if (span_is(name, "Connection")) {
		s->connection |= list_has(value, "upgrade");
	} else if (span_is(name, "Sec-WebSocket-Version")) {
		s->version = span_is(value, "13");
	} else if (span_is(name, "Sec-WebSocket-Key")) {
		if (s->key_at != NULL)
			s->key_twice = true;
		s->key_at = value.p;
		s->key = key_ok(value);
	} else if (span_is(name, "Sec-WebSocket-Protocol")) {
		pick_protocol(value, s);
	}
	return NULL;
}

/* "GET /path?query HTTP/1.1": the status it earns (0: fine). */
static enum http_upgrade_status request_line(struct span line, const char *path,
					     const char **why)
{
	const char *sp1 = memchr(line.p, ' ', line.n), *sp2, *end = line.p + line.n;
	struct span target, version;
	size_t plen;

	sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1)) : NULL;
	if (sp1 == NULL || sp2 == NULL) {
		*why = "malformed request line";
		return HTTP_UPGRADE_BAD_REQUEST;
	}
	target = (struct span){ sp1 + 1, (size_t)(sp2 - sp1 - 1) };
	version = (struct span){ sp2 + 1, (size_t)(end - sp2 - 1) };
	if ((size_t)(sp1 - line.p) != 3 || memcmp(line.p, "GET", 3) != 0) {
		*why = "method is not GET";
		return HTTP_UPGRADE_BAD_METHOD;
	}
	if (version.n != 8 || memcmp(version.p, "HTTP/1.1", 8) != 0) {
		*why = "not HTTP/1.1";
		return HTTP_UPGRADE_BAD_REQUEST;
	}
	if (target.n == 0 || target.p[0] != '/') {
		*why = "request target is not a path";
		return HTTP_UPGRADE_BAD_REQUEST;
	}
	for (size_t i = 0; i < target.n; i++)
		if ((unsigned char)target.p[i] <= ' ' || (unsigned char)target.p[i] >= 0x7f) {
			*why = "bad character in the request target";
			return HTTP_UPGRADE_BAD_REQUEST;
		}
	plen = strlen(path);
	if (plen > 0 && (target.n < plen || memcmp(target.p, path, plen) != 0 ||
			 (target.n > plen && target.p[plen] != '?'))) {
		*why = "path not served here";
		return HTTP_UPGRADE_NOT_FOUND;
	}
	return 0;
}

void http_upgrade_prepare(void)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen;

	OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL);
	(void)EVP_Digest("", 0, md, &mdlen, EVP_sha1(), NULL);
}

static void accept_key(const char *key, char out[HTTP_UPGRADE_ACCEPT_LEN + 1])
{
	char text[WS_KEY_LEN + sizeof(WS_GUID)];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	memcpy(text, key, WS_KEY_LEN);
	memcpy(text + WS_KEY_LEN, WS_GUID, sizeof(WS_GUID) - 1);
	if (EVP_Digest(text, WS_KEY_LEN + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL) != 1 ||
	    b64_encode(B64_STD, md, mdlen, out, HTTP_UPGRADE_ACCEPT_LEN + 1) !=
	    HTTP_UPGRADE_ACCEPT_LEN)
		out[0] = '\0';
}

static void fail(struct http_upgrade *out, enum http_upgrade_status status, const char *why)
{
	out->status = status;
	out->why = why;
}

/* What the headers together say, once all are read. */
static void conclude(const struct seen *s, struct http_upgrade *out)
{
	if (!s->upgrade || !s->connection)
		return fail(out, HTTP_UPGRADE_REQUIRED, "not a WebSocket upgrade");
	if (!s->version)
		return fail(out, HTTP_UPGRADE_REQUIRED, "Sec-WebSocket-Version is not 13");
	if (!s->host)
		return fail(out, HTTP_UPGRADE_BAD_REQUEST, "no Host header");
	if (!s->key || s->key_twice)
		return fail(out, HTTP_UPGRADE_BAD_REQUEST, "bad Sec-WebSocket-Key");
	if (s->protocol == NULL)
		return fail(out, HTTP_UPGRADE_BAD_REQUEST,
			    "no MQTT subprotocol (mqtt, mqttv3.1) offered");
	accept_key(s->key_at, out->accept);
	if (out->accept[0] == '\0')
		return fail(out, HTTP_UPGRADE_BAD_REQUEST, "cannot compute the accept key");
	out->status = HTTP_UPGRADE_SWITCHING;
	out->protocol = s->protocol;
}

void http_upgrade_parse(const char *buf, size_t len, size_t max_len, const char *path,
			struct http_upgrade *out)
{
	struct seen s = { .host = false };
	size_t scan = len < max_len ? len : max_len, off = 0;
	const char *end = NULL;
	unsigned lines = 0;

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i + 3 < scan && end == NULL; i++)
		if (memcmp(buf + i, "\r\n\r\n", 4) == 0)
			end = buf + i;
	if (end == NULL) {
		if (len >= max_len)
			fail(out, HTTP_UPGRADE_TOO_LARGE, "request too large");
		return;
	}
	out->length = (size_t)(end - buf) + 4;
	/* Each line up to its CRLF; the block ends at the empty line. */
	while (buf + off <= end) {
		const char *eol = memchr(buf + off, '\r', (size_t)(end - buf - (ptrdiff_t)off) + 1);
		struct span line = { buf + off, (size_t)(eol - buf) - off };
		const char *why = NULL;

		if (eol[1] != '\n' || memchr(line.p, '\n', line.n) || memchr(line.p, '\0', line.n))
			return fail(out, HTTP_UPGRADE_BAD_REQUEST, "bad line ending");
		if (lines == 0) {
			enum http_upgrade_status st = request_line(line, path, &why);

			if (st != 0)
				return fail(out, st, why);
		} else if (lines > HTTP_UPGRADE_MAX_HEADERS) {
			return fail(out, HTTP_UPGRADE_TOO_LARGE, "too many header lines");
		} else if ((why = header(line, &s)) != NULL) {
			return fail(out, HTTP_UPGRADE_BAD_REQUEST, why);
		}
		lines++;
		off = (size_t)(eol - buf) + 2;
	}
	conclude(&s, out);
}

static const char *reason(enum http_upgrade_status status)
{
	switch (status) {
	case HTTP_UPGRADE_SWITCHING: return "Switching Protocols";
	case HTTP_UPGRADE_NOT_FOUND: return "Not Found";
	case HTTP_UPGRADE_BAD_METHOD: return "Method Not Allowed";
	case HTTP_UPGRADE_REQUIRED: return "Upgrade Required";
	case HTTP_UPGRADE_TOO_LARGE: return "Request Header Fields Too Large";
	default: return "Bad Request";
	}
}

size_t http_upgrade_response(const struct http_upgrade *u, char *out, size_t cap)
{
	int n;

	if (u->status == HTTP_UPGRADE_SWITCHING)
		n = snprintf(out, cap, "HTTP/1.1 101 Switching Protocols\r\n"
			     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
			     "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
			     u->accept, u->protocol);
	else
		n = snprintf(out, cap, "HTTP/1.1 %d %s\r\n%s%s%s"
			     "Connection: close\r\nContent-Length: 0\r\n\r\n",
			     u->status == HTTP_UPGRADE_INCOMPLETE ? 400 : (int)u->status,
			     reason(u->status),
			     u->status == HTTP_UPGRADE_REQUIRED ? "Upgrade: websocket\r\n" : "",
			     u->status == HTTP_UPGRADE_REQUIRED ? "Sec-WebSocket-Version: 13\r\n" : "",
			     u->status == HTTP_UPGRADE_BAD_METHOD ? "Allow: GET\r\n" : "");
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
