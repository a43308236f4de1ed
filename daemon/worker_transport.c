/*
 * worker_transport.c - a connection's layers between its socket and MQTT
 * (worker_transport.h): which ones a transport has, each made and freed
 * here, and the calls worker_conn.c makes handed to the top one. The
 * bottom of the stack is here too: xport_lower_read() and
 * xport_lower_write(), the TLS layer when there is one, else the socket.
 *
 * The TLS layer (mqtts, wss) drives the handshake of worker_tls.c: on
 * EPOLLIN or EPOLLOUT as OpenSSL asks, or, while it waits for the key
 * role's signature, on its answer (xport_keys_answered), with the
 * connection's input off meanwhile. Its end resets the connection's clock,
 * so that connect_timeout counts from then; until then
 * tls.handshake_timeout applies (worker.c). Under MQTT alone (mqtts) it
 * reads records into the worker's read buffer and hands them to
 * conn_feed(), and writes c->out with SSL_write, no copy between.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "ipc.h"
#include "log.h"
#include "worker_int.h"
#include "worker_tls.h"
#include "worker_transport.h"

static bool has_ws(uint8_t t)
{
	return t == LISTEN_WS || t == LISTEN_WSS;
}

int xport_new(struct worker *w, int fd, conn_id_t id, const struct ipc_client *info,
	      struct xport **xp, const char **why)
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
		if (w->tls == NULL) {
			*why = "TLS is not configured";
			return -1;
		}
		if (!tls_worker_serves(w->tls, info->tls)) {
			*why = "unknown TLS certificate";
			return -1;
		}
		break;
	default:
		*why = "unknown transport";
		return -1;
	}
	memcpy(path, info->path, sizeof(path));
	path[sizeof(path) - 1] = '\0';
	x = calloc(1, sizeof(*x));
	*why = "out of memory";
	if (x == NULL)
		return -1;
	x->transport = (uint8_t)info->transport;
	x->cert = listen_transport_tls(x->transport) ? (uint8_t)info->tls : 0;
	x->fd = fd;
	x->out_head = has_ws(x->transport) ? WS_HEAD_MAX : 0;
	/* Before the key role's chain came, its TLS waits (xport_chain_came). */
	if ((has_ws(x->transport) && (x->ws = ws_new(path)) == NULL) ||
	    (listen_transport_tls(x->transport) && tls_worker_ready(w->tls, x->cert) &&
	     (x->tls = tls_conn_new(w->tls, x->cert, fd, x)) == NULL)) {
		xport_free(x);
		return -1;
	}
	x->id = id;
	*xp = x;
	return 0;
}

void xport_free(struct xport *xp)
{
	if (xp == NULL)
		return;
	ws_free(xp->ws);
	tls_conn_free(xp->tls);
	free(xp);
}

bool xport_handshaking(const struct xport *xp)
{
	return listen_transport_tls(xp->transport) && !xp->tls_up;
}

/* What TLS waits for on the socket's writability (in_off as conn_epoll_mod set it). */
static bool tls_wants_epollout(const struct conn *c, bool in_off)
{
	return c->xp->tls_wants_out || (c->xp->tls_pending && !in_off);
}

uint32_t xport_events(struct conn *c)
{
	c->xp->out_armed = tls_wants_epollout(c, c->in_off);
	return c->xp->out_armed ? EPOLLOUT : 0;
}

/* --- TLS ------------------------------------------------------------------ */

/*
 * After a TLS call: its input is off while the handshake waits for the
 * key role (a readable socket would call it again and again), EPOLLOUT
 * armed while TLS waits for the socket to take bytes or holds bytes
 * wslay is to read; the registration changed only when one of them did.
 */
static void tls_rearm(struct worker *w, struct conn *c, bool changed)
{
	struct xport *x = c->xp;

	x->tls_pending = x->tls_up && tls_conn_pending(x->tls);
	if (changed || x->out_armed != tls_wants_epollout(c, c->paused || c->throttled ||
							   c->out_full))
		conn_set_events(w, c);
}

/* The handshake, a step further; true when it is done (and the connection still open). */
static bool tls_handshake_step(struct worker *w, struct conn *c)
{
	struct xport *x = c->xp;
	enum tls_result r = tls_conn_handshake(x->tls);

	bool paused = c->paused;

	x->tls_wants_out = r == TLS_WANT_WRITE;
	x->tls_wants_job = r == TLS_WANT_JOB;
	x->tls_wants_keys = c->paused = r == TLS_WANT_KEYS || r == TLS_WANT_JOB;
	if (x->tls_wants_job)
		w->tls_jobs_wanted++;
	if (r == TLS_CLOSED || r == TLS_ERROR) {
		x->tls_failed = true;
		conn_close(w, c, false, r == TLS_CLOSED ? "connection closed by client during the "
			   "TLS handshake" : "TLS handshake failed");
		return false;
	}
	if (r == TLS_DONE) {
		x->tls_up = true;
		c->last_rx_ms = w->now_ms;   /* connect_timeout from now */
		log_debug("TLS from %s (ALPN %s)", c->remote,
			  tls_conn_alpn(x->tls) != NULL ? "mqtt" : "none");
	}
	tls_rearm(w, c, paused != c->paused);
	return r == TLS_DONE;
}

int xport_identity(const struct conn *c, char *buf, size_t len)
{
	return c->xp != NULL && c->xp->tls != NULL && c->xp->tls_up ?
	       tls_conn_identity(c->xp->tls, buf, len) : -1;
}

void xport_chain_came(struct worker *w)
{
	for (uint32_t i = 0; i < w->n_slots; i++) {
		struct conn *c = w->slots[i];
		struct xport *x = c != NULL ? c->xp : NULL;

		if (x == NULL || !listen_transport_tls(x->transport) || x->tls != NULL ||
		    !tls_worker_ready(w->tls, x->cert))
			continue;
		if ((x->tls = tls_conn_new(w->tls, x->cert, x->fd, x)) == NULL) {
			conn_close(w, c, false, "out of memory for TLS");
			continue;
		}
		if (tls_handshake_step(w, c))
			xport_read(w, c);
	}
}

void xport_jobs_freed(struct worker *w)
{
	uint32_t wanted = w->tls_jobs_wanted;

	w->tls_jobs_wanted = 0;
	for (uint32_t i = 0; i < w->n_slots && wanted > 0; i++) {
		struct conn *c = w->slots[i];

		if (c == NULL || c->xp == NULL || !c->xp->tls_wants_job)
			continue;
		wanted--;
		if (tls_handshake_step(w, c))
			xport_read(w, c);
		else if (w->tls_jobs_wanted > 0) {
			w->tls_jobs_wanted += wanted;   /* none free again: the rest wait on */
			return;
		}
	}
}

void xport_keys_answered(struct tls_conn *tc, void *worker)
{
	struct worker *w = worker;
	struct xport *x = tls_conn_owner(tc);
	struct conn *c = conn_lookup(w, x->id);

	if (c == NULL || c->xp != x)
		return;
	if (tls_handshake_step(w, c))
		xport_read(w, c);     /* what came behind the client's Finished */
}

/* MQTT over TLS: whole records into the read buffer, to conn_feed, READ_CHUNK bytes at most. */
static void tls_mqtt_read(struct worker *w, struct conn *c)
{
	size_t total = 0, n;
	enum tls_result r = TLS_DONE;

	while (total < READ_CHUNK && !(c->paused || c->throttled || c->out_full)) {
		r = tls_conn_read(c->xp->tls, w->rbuf, READ_CHUNK, &n);
		if (r != TLS_DONE)
			break;
		total += n;
		if (!conn_feed(w, &c, w->rbuf, n))
			return;
		/* All it read is out: the next read(2) would most likely find nothing. */
		if (!tls_conn_buffered(c->xp->tls))
			break;
	}
	if (r == TLS_CLOSED || r == TLS_ERROR) {
		c->xp->tls_failed = true;
		conn_close(w, c, true, r == TLS_CLOSED ? "connection closed by client" :
			   "TLS error");
		return;
	}
	c->xp->tls_wants_out = r == TLS_WANT_WRITE;
	tls_rearm(w, c, false);
}

/* MQTT over TLS: c->out through SSL_write, in place. */
static bool tls_mqtt_flush(struct worker *w, struct conn *c)
{
	struct buf *b;
	enum tls_result r;
	size_t n;

	while ((b = c->out) != NULL && b->off < b->len) {
		r = tls_conn_write(c->xp->tls, b->data + b->off, b->len - b->off, &n);
		if (r == TLS_WANT_WRITE || r == TLS_WANT_READ) {
			conn_flushed(w, c, true);
			return true;
		}
		if (r != TLS_DONE) {
			c->xp->tls_failed = true;
			conn_close(w, c, true, r == TLS_CLOSED ? "connection closed by client" :
				   "TLS error");
			return false;
		}
		b->off += n;
	}
	conn_flushed(w, c, false);
	return true;
}

/* --- the top layer -------------------------------------------------------- */

void xport_read(struct worker *w, struct conn *c)
{
	struct xport *x = c->xp;
	conn_id_t id = x->id;

	if (listen_transport_tls(x->transport) && !x->tls_up) {
		if (x->tls == NULL && !c->paused) {
			c->paused = true;    /* the key role's chain first: its input off till then */
			conn_set_events(w, c);
			return;
		}
		if (x->tls == NULL || x->tls_wants_keys) {
			/* Its input is off, yet here: the client hung up or the socket broke. */
			conn_close(w, c, false, "connection closed by client during the TLS handshake");
			return;
		}
		if (!tls_handshake_step(w, c))
			return;
	}
	if (x->ws == NULL) {
		tls_mqtt_read(w, c);
		return;
	}
	ws_read(w, c);
	/* MQTT may have closed or moved the connection. */
	if ((c = conn_lookup(w, id)) != NULL && c->xp->tls != NULL)
		tls_rearm(w, c, false);
}

bool xport_out_ready(struct worker *w, struct conn *c)
{
	struct xport *x = c->xp;
	conn_id_t id = x->id;

	if (!x->tls_wants_out && !(x->tls_pending && !c->in_off))
		return false;
	x->tls_wants_out = false;
	if (xport_handshaking(x) && (x->tls == NULL || !tls_handshake_step(w, c)))
		return true;
	xport_read(w, c);
	if ((c = conn_lookup(w, id)) != NULL && c->want_out)
		conn_flush(w, c);
	return true;
}

bool xport_flush(struct worker *w, struct conn *c)
{
	struct xport *x = c->xp;

	if (xport_handshaking(x))
		return true;          /* no MQTT before the handshake: nothing to send */
	if (x->ws != NULL)
		return ws_flush(w, c);
	return tls_mqtt_flush(w, c);
}

void xport_last_write(struct worker *w, struct conn *c)
{
	struct xport *x = c->xp;
	struct buf *b = c->out;
	size_t n;

	if (xport_handshaking(x) || x->tls_failed)
		return;        /* nothing to say, or no way to say it */
	if (x->ws != NULL)
		ws_last_write(w, c);
	else if (buf_held(b) > 0)
		(void)tls_conn_write(x->tls, b->data + b->off, buf_held(b), &n);
	if (x->tls != NULL)
		tls_conn_close_notify(x->tls);
}

/* --- the layer below ------------------------------------------------------ */

/*
 * TLS's answer as read(2)'s and write(2)'s: EAGAIN, 0 at the end, EPROTO
 * when broken. A read that waits for the socket to take bytes has
 * EPOLLOUT armed (xport_read); a write, as any blocked flush
 * (conn_flushed).
 */
static ssize_t tls_as_syscall(struct xport *x, enum tls_result r, size_t n, bool reading)
{
	switch (r) {
	case TLS_DONE:
		return (ssize_t)n;
	case TLS_WANT_WRITE:
		if (reading)
			x->tls_wants_out = true;
		/* fall through */
	case TLS_WANT_READ:
	case TLS_WANT_KEYS:
		errno = EAGAIN;
		return -1;
	case TLS_CLOSED:
		x->tls_failed = true;
		return 0;
	default:
		x->tls_failed = true;
		errno = EPROTO;
		return -1;
	}
}

ssize_t xport_lower_read(struct conn *c, void *buf, size_t n)
{
	enum tls_result t;
	ssize_t r;
	size_t got = 0;

	if (c->xp->tls != NULL) {
		t = tls_conn_read(c->xp->tls, buf, n, &got);
		return tls_as_syscall(c->xp, t, got, true);
	}
	do
		r = read(c->fd, buf, n);
	while (r < 0 && errno == EINTR);
	return r;
}

ssize_t xport_lower_write(struct conn *c, const void *buf, size_t n)
{
	enum tls_result t;
	ssize_t r;
	size_t put = 0;

	if (c->xp->tls != NULL) {
		t = tls_conn_write(c->xp->tls, buf, n, &put);
		return tls_as_syscall(c->xp, t, put, false);
	}
	do
		r = send(c->fd, buf, n, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	return r;
}
