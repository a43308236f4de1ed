/*
 * worker_transport.c - a connection's layers between its socket and MQTT
 * (worker_transport.h): which ones a transport has, each made and freed
 * here, and the calls worker_conn.c makes handed to the top one. The
 * bottom of the stack is here too: xport_lower_read() and
 * xport_lower_write(), the socket, where a TLS layer is to go.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "ipc.h"
#include "worker_int.h"
#include "worker_transport.h"

int xport_new(const struct ipc_client *info, struct xport **xp, const char **why)
{
	char path[LISTEN_PATH_MAX];
	struct xport *x;

	*xp = NULL;
	/* From the listener: a valid transport, a path within its array. */
	switch (info->transport) {
	case LISTEN_TCP:
		return 0;
	case LISTEN_WS:
		break;
	case LISTEN_MQTTS:
	case LISTEN_WSS:
		*why = "TLS is not served";
		return -1;
	default:
		*why = "unknown transport";
		return -1;
	}
	memcpy(path, info->path, sizeof(path));
	path[sizeof(path) - 1] = '\0';
	x = calloc(1, sizeof(*x));
	if (x == NULL || (x->ws = ws_new(path)) == NULL) {
		free(x);
		*why = "out of memory";
		return -1;
	}
	x->transport = (uint8_t)info->transport;
	*xp = x;
	return 0;
}

void xport_free(struct xport *xp)
{
	if (xp == NULL)
		return;
	ws_free(xp->ws);
	free(xp);
}

void xport_read(struct worker *w, struct conn *c)
{
	ws_read(w, c);
}

bool xport_flush(struct worker *w, struct conn *c)
{
	return ws_flush(w, c);
}

void xport_last_write(struct worker *w, struct conn *c)
{
	ws_last_write(w, c);
}

ssize_t xport_lower_read(struct conn *c, void *buf, size_t n)
{
	ssize_t r;

	do
		r = read(c->fd, buf, n);
	while (r < 0 && errno == EINTR);
	return r;
}

ssize_t xport_lower_write(struct conn *c, const void *buf, size_t n, bool more)
{
	ssize_t r;

	do
		r = send(c->fd, buf, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
	while (r < 0 && errno == EINTR);
	return r;
}
