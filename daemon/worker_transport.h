/*
 * worker_transport.h - the layers a worker's connection may have between
 * its socket and MQTT (daemon/worker_transport.c), private to the worker.
 *
 * A plain MQTT-over-TCP connection has none: its struct conn's xp is NULL,
 * and worker_conn.c reads and writes its socket as it always did, at the
 * cost of one test of that pointer. Any other transport has a struct
 * xport, made when the worker takes the connection and freed with it
 * (conn_free_state), naming the layers it has, top first:
 *
 *   ws    MQTT | WebSocket (worker_ws.c)          | socket
 *   wss   MQTT | WebSocket | TLS (not built yet)  | socket
 *   mqtts MQTT | TLS (not built yet)              | socket
 *
 * worker_conn.c hands a layered connection's read, flush and last write
 * to the top layer here; a layer reads and writes the one below it through
 * xport_lower_read() and xport_lower_write(), which are the socket's, or
 * the TLS layer's once there is one. MQTT's bytes reach the decoder through
 * conn_feed() (worker_conn.c) whatever the transport.
 */
#ifndef IOTD_WORKER_TRANSPORT_H
#define IOTD_WORKER_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct worker;
struct conn;
struct ipc_client;
struct ws_conn;

struct xport {
	uint8_t transport;           /* enum listen_transport (config.h), never LISTEN_TCP */
	struct ws_conn *ws;          /* ws, wss: the WebSocket layer (worker_ws.c) */
	/* mqtts, wss: the TLS layer belongs here, under the others. */
};

/*
 * The layers for a connection the listener handed over (info checked as
 * hostile: a transport this worker does not serve is refused). Returns 0
 * with *xp NULL for plain TCP, 0 with *xp set, or -1 with the reason in why.
 */
int xport_new(const struct ipc_client *info, struct xport **xp, const char **why);
void xport_free(struct xport *xp);

/* conn_read, conn_flush and conn_close's last write for a connection with layers. */
void xport_read(struct worker *w, struct conn *c);
bool xport_flush(struct worker *w, struct conn *c);
void xport_last_write(struct worker *w, struct conn *c);

/*
 * The layer below the calling one: read(2) and write(2) semantics on the
 * socket (-1 with errno EAGAIN when it would block); more: more bytes
 * follow at once (MSG_MORE).
 */
ssize_t xport_lower_read(struct conn *c, void *buf, size_t n);
ssize_t xport_lower_write(struct conn *c, const void *buf, size_t n, bool more);

/* worker_ws.c: the WebSocket layer. */
struct ws_conn *ws_new(const char *path);
void ws_free(struct ws_conn *ws);
void ws_read(struct worker *w, struct conn *c);
bool ws_flush(struct worker *w, struct conn *c);
void ws_last_write(struct worker *w, struct conn *c);

#endif
