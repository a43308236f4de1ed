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
 *   wss   MQTT | WebSocket | TLS (worker_tls.c)   | socket
 *   mqtts MQTT | TLS                              | socket
 *
 * worker_conn.c hands a layered connection's read, flush and last write
 * to the top layer here; a layer reads and writes the one below it through
 * xport_lower_read() and xport_lower_write(), which are the TLS layer's
 * when there is one, else the socket's. The TLS layer's handshake comes
 * first: until it is done nothing above it runs. MQTT's bytes reach the decoder through
 * conn_feed() (worker_conn.c) whatever the transport.
 */
#ifndef IOTD_WORKER_TRANSPORT_H
#define IOTD_WORKER_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "iotd.h"

struct worker;
struct tls_conn;
struct conn;
struct ipc_client;
struct ws_conn;

struct xport {
	uint8_t transport;           /* enum listen_transport (config.h), never LISTEN_TCP */
	bool tls_up : 1;             /* the TLS handshake is done */
	bool tls_wants_out : 1;      /* TLS's handshake or read waits for the socket to take bytes */
	bool tls_wants_keys : 1;     /* the handshake waits for the key role (input off) */
	bool tls_wants_job : 1;      /* ... or for another's signature to free a job (input off) */
	bool tls_pending : 1;        /* OpenSSL holds bytes no event on the fd will announce */
	bool out_armed : 1;          /* EPOLLOUT armed for the above (xport_events) */
	bool tls_failed : 1;         /* closed or broken: nothing more is written */
	uint8_t cert;                /* mqtts, wss: the certificate presented (TLS_CERTS_MAX, checked) */
	uint8_t out_head;            /* bytes kept free in front of c->out's unsent ones (WS_HEAD_MAX) */
	conn_id_t id;                /* its connection, which moves (a key role's answer finds it) */
	int fd;                      /* its socket, for a TLS made once the chain came */
	struct ws_conn *ws;          /* ws, wss: the WebSocket layer (worker_ws.c) */
	struct tls_conn *tls;        /* mqtts, wss: the TLS layer, under the others (NULL until
	                              * the key role's chain came) */
};

/*
 * The layers for connection id, which the listener handed over on fd (info
 * checked as hostile: a transport this worker does not serve is refused).
 * Returns 0 with *xp NULL for plain TCP, 0 with *xp set, or -1 with the
 * reason in why.
 */
int xport_new(struct worker *w, int fd, conn_id_t id, const struct ipc_client *info,
	      struct xport **xp, const char **why);
void xport_free(struct xport *xp);
/* Whether its TLS handshake is still going (tls.handshake_timeout, not connect_timeout). */
bool xport_handshaking(const struct xport *xp);
/*
 * Events beyond what worker_conn.c arms that the layers wait for: EPOLLOUT
 * for TLS (conn_epoll_mod, which has set c->in_off).
 */
uint32_t xport_events(struct conn *c);
/*
 * EPOLLOUT came for a layered connection: true when it was the layers'
 * (the handshake or a read went on; c may be closed or moved), false when
 * it is the output's (conn_flush).
 */
bool xport_out_ready(struct worker *w, struct conn *c);
/*
 * The verified client certificate's identity (tls_conn_identity) of a TLS
 * connection, into buf; its length, or -1 (none, longer than
 * XPORT_IDENTITY_MAX, or not TLS).
 */
#define XPORT_IDENTITY_MAX 1024      /* a certificate's CN or SAN as a user name, bytes */
int xport_identity(const struct conn *c, char *buf, size_t len);
/* The key role's first chain came: the TLS connections that waited for it start. */
void xport_chain_came(struct worker *w);
/*
 * After the key role's answers: the handshakes that found no job free go
 * on (TLS_WANT_JOB), while jobs last.
 */
void xport_jobs_freed(struct worker *w);
/* The key role answered the handshake of the TLS connection tc (tls_worker_on_keys). */
void xport_keys_answered(struct tls_conn *tc, void *worker);

/* conn_read, conn_flush and conn_close's last write for a connection with layers. */
void xport_read(struct worker *w, struct conn *c);
bool xport_flush(struct worker *w, struct conn *c);
void xport_last_write(struct worker *w, struct conn *c);

/*
 * The layer below the calling one: read(2) and write(2) semantics (-1
 * with errno EAGAIN when it would block). After TLS_WANT_WRITE a write is
 * made again with the same bytes (worker_ws.c's ws_output).
 */
ssize_t xport_lower_read(struct conn *c, void *buf, size_t n);
ssize_t xport_lower_write(struct conn *c, const void *buf, size_t n);

/*
 * worker_ws.c: the WebSocket layer. A frame of MQTT's output has its
 * header written in the bytes kept free in front of it (xport.out_head):
 * WS_HEAD_MAX, the header of a server frame of up to 65535 payload bytes.
 */
#define WS_HEAD_MAX 4
struct ws_conn *ws_new(const char *path);
void ws_free(struct ws_conn *ws);
void ws_read(struct worker *w, struct conn *c);
bool ws_flush(struct worker *w, struct conn *c);
void ws_last_write(struct worker *w, struct conn *c);

#endif
