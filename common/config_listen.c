/*
 * config_listen.c - one listen address parsed and checked:
 * "host:port", "[v6]:port", "tcp://host:port" or ":port", and with the
 * other transports' schemes "mqtts://host:port", "ws://host:port[/path]"
 * and "wss://host:port[/path]", the TLS ones with "?tls=name" after
 * them (the certificate they present), into a struct listen_addr
 * (config_parse_listen, include/config.h). The file, the environment and
 * -l all reach it through add_listen() in config.c.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static bool valid_ipv6(const char *host)
{
	char addr[INET6_ADDRSTRLEN];
	const char *zone = strchr(host, '%');
	size_t len = zone ? (size_t)(zone - host) : strlen(host);
	unsigned char buf[sizeof(struct in6_addr)];

	if (len == 0 || len >= sizeof(addr))
		return false;
	memcpy(addr, host, len);
	addr[len] = '\0';
	if (inet_pton(AF_INET6, addr, buf) != 1)
		return false;
	if (!zone)
		return true;
	/* A zone is an interface name (link-local addresses): IFNAMSIZ - 1. */
	zone++;
	if (*zone == '\0' || strlen(zone) > 15)
		return false;
	for (; *zone; zone++)
		if (!isalnum((unsigned char)*zone) && !strchr("._-", *zone))
			return false;
	return true;
}

/* Labels of letters, digits, '-' and '_'; no empty label. */
static bool valid_hostname(const char *host)
{
	size_t label = 0;

	for (const char *p = host; *p; p++) {
		if (*p == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum((unsigned char)*p) || *p == '-' || *p == '_') {
			label++;
		} else {
			return false;
		}
	}
	return label > 0 && host[0] != '-';
}

/*
 * Digits and dots only must be a dotted quad: the resolver would take
 * "10.1" or "4294967295" as an address in inet_aton's legacy forms.
 */
static bool looks_numeric(const char *host)
{
	return host[strspn(host, "0123456789.")] == '\0';
}

static int parse_port(const char *s, struct listen_addr *a)
{
	size_t n = strspn(s, "0123456789");
	long port;

	if (n == 0 || n > 5 || s[n] != '\0')
		return -1;
	port = strtol(s, NULL, 10);
	if (port < 1 || port > 65535)
		return -1;
	snprintf(a->port, sizeof(a->port), "%ld", port);
	return 0;
}

static int copy_host(struct listen_addr *a, const char *host, size_t len)
{
	if (len >= sizeof(a->host))
		return -1;
	memcpy(a->host, host, len);
	a->host[len] = '\0';
	return 0;
}

static int parse_bracketed(const char *s, struct listen_addr *a)
{
	const char *close = strchr(s, ']');

	if (!close || close[1] != ':')
		return -1;
	if (copy_host(a, s + 1, (size_t)(close - s - 1)) < 0 || !valid_ipv6(a->host))
		return -1;
	a->family = AF_INET6;
	return parse_port(close + 2, a);
}

static int parse_plain(const char *s, struct listen_addr *a)
{
	const char *colon = strrchr(s, ':');
	struct in_addr in4;

	/* A second colon is an IPv6 address without brackets: ambiguous. */
	if (!colon || memchr(s, ':', (size_t)(colon - s)))
		return -1;
	if (copy_host(a, s, (size_t)(colon - s)) < 0)
		return -1;
	if (a->host[0] == '\0' || strcmp(a->host, "*") == 0) {
		a->host[0] = '\0';
		a->family = AF_UNSPEC;
	} else if (inet_pton(AF_INET, a->host, &in4) == 1) {
		a->family = AF_INET;
	} else if (looks_numeric(a->host) || !valid_hostname(a->host)) {
		return -1;
	} else {
		a->family = AF_UNSPEC;
	}
	return parse_port(colon + 1, a);
}

static const struct {
	const char *scheme;      /* with its "://" */
	enum listen_transport transport;
} schemes[] = {
	{ "tcp://", LISTEN_TCP },
	{ "mqtts://", LISTEN_MQTTS },
	{ "ws://", LISTEN_WS },
	{ "wss://", LISTEN_WSS },
};

const char *listen_transport_name(int transport)
{
	static const char *const names[] = { "tcp", "mqtts", "ws", "wss" };

	return transport >= 0 && transport < LISTEN_N_TRANSPORTS ? names[transport] : "?";
}

bool listen_transport_tls(int transport)
{
	return transport == LISTEN_MQTTS || transport == LISTEN_WSS;
}

/*
 * A ws:// path: "/" then visible ASCII, no query or fragment (a request
 * for "/mqtt?x" is matched on its path alone).
 */
static int parse_path(const char *s, struct listen_addr *a)
{
	size_t len = strlen(s);

	if (s[0] != '/' || len >= sizeof(a->path))
		return -1;
	for (const char *p = s; *p; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == '?' || *p == '#')
			return -1;
	memcpy(a->path, s, len + 1);
	return 0;
}

/* "tls=name": letters, digits, '.', '_' and '-', up to TLS_NAME_MAX - 1 of them. */
static int parse_query(const char *q, struct listen_addr *a)
{
	size_t len;

	if (strncmp(q, "tls=", 4) != 0 || !listen_transport_tls(a->transport))
		return -1;
	q += 4;
	len = strspn(q, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");
	if (len == 0 || q[len] != '\0' || len >= sizeof(a->tls_name))
		return -1;
	memcpy(a->tls_name, q, len + 1);
	return 0;
}

int config_parse_listen(const char *s, struct listen_addr *out)
{
	struct listen_addr a;
	char hostport[96], addr[160];
	const char *slash, *query;
	size_t len;

	if (!s || !out)
		return -1;
	memset(&a, 0, sizeof(a));
	a.transport = LISTEN_TCP;
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i].scheme);

		if (strncasecmp(s, schemes[i].scheme, n) == 0) {
			a.transport = schemes[i].transport;
			s += n;
			break;
		}
	}
	if (strstr(s, "://"))
		return -1;
	/* The query first: what is before it is parsed as ever. */
	if ((query = strchr(s, '?')) != NULL) {
		if ((size_t)(query - s) >= sizeof(addr) || parse_query(query + 1, &a) < 0)
			return -1;
		memcpy(addr, s, (size_t)(query - s));
		addr[query - s] = '\0';
		s = addr;
	}
	/* Only WebSocket listeners have a path. */
	slash = strchr(s, '/');
	len = slash ? (size_t)(slash - s) : strlen(s);
	if (slash && ((a.transport != LISTEN_WS && a.transport != LISTEN_WSS) ||
		      parse_path(slash, &a) < 0))
		return -1;
	if (len >= sizeof(hostport))
		return -1;
	memcpy(hostport, s, len);
	hostport[len] = '\0';
	if (*hostport == '[' ? parse_bracketed(hostport, &a) < 0 : parse_plain(hostport, &a) < 0)
		return -1;
	*out = a;
	return 0;
}
