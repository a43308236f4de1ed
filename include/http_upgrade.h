/*
 * http_upgrade.h - the interface of common/http_upgrade.c: a WebSocket
 * opening handshake (RFC 6455, section 4.2) read from a client and its
 * answer.
 */
#ifndef IOTD_HTTP_UPGRADE_H
#define IOTD_HTTP_UPGRADE_H

#include <stddef.h>

#define HTTP_UPGRADE_MAX_HEADERS 64  /* header lines one request may have */
#define HTTP_UPGRADE_ACCEPT_LEN 28   /* base64 of a SHA-1 digest */

/* What to answer: 0 while the request is not whole, else an HTTP status. */
enum http_upgrade_status {
	HTTP_UPGRADE_INCOMPLETE = 0,
	HTTP_UPGRADE_SWITCHING = 101,    /* a valid upgrade: the connection speaks WebSocket */
	HTTP_UPGRADE_BAD_REQUEST = 400,  /* malformed, or no MQTT subprotocol offered */
	HTTP_UPGRADE_NOT_FOUND = 404,    /* a path the listener does not serve */
	HTTP_UPGRADE_BAD_METHOD = 405,   /* not GET */
	HTTP_UPGRADE_REQUIRED = 426,     /* not a WebSocket upgrade, or not version 13 */
	HTTP_UPGRADE_TOO_LARGE = 431,    /* past the size bound or HTTP_UPGRADE_MAX_HEADERS */
};

struct http_upgrade {
	enum http_upgrade_status status;
	size_t length;                   /* the request's bytes, through its empty line */
	const char *protocol;            /* 101: "mqtt" or "mqttv3.1", the subprotocol chosen */
	char accept[HTTP_UPGRADE_ACCEPT_LEN + 1]; /* 101: Sec-WebSocket-Accept */
	const char *why;                 /* otherwise: what was wrong, for the log */
};

/*
 * Read the request at the start of buf (len bytes, of which the client
 * may send at most max_len before its empty line). path: the one path
 * served ("/mqtt"; a query after it is allowed), or "" for any. Fills
 * *out; its status says whether to wait for more bytes (INCOMPLETE) or
 * what to answer. Bytes after the request (length on) are not looked at.
 */
/*
 * OpenSSL's configuration read and SHA-1 found, in a process about to give
 * up its files (a worker, before privsep_enter): the first accept key
 * would otherwise want them.
 */
void http_upgrade_prepare(void);

void http_upgrade_parse(const char *buf, size_t len, size_t max_len, const char *path,
			struct http_upgrade *out);

/*
 * The answer to a request whose status is not INCOMPLETE: "101 Switching
 * Protocols" with the accept key and subprotocol, or the error status with
 * "Connection: close". Returns its length (at most cap - 1, NUL-terminated),
 * 0 if cap is too small (256 bytes always do).
 */
size_t http_upgrade_response(const struct http_upgrade *u, char *out, size_t cap);

#endif
