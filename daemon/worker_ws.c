/*
 * worker_ws.c - the WebSocket layer of a worker's connection (RFC 6455;
 * worker_transport.h): MQTT over ws://.
 *
 * Owns each such connection's struct ws_conn: first its opening handshake
 * (the HTTP upgrade request gathered up to server.max_http_request_size,
 * read by common/http_upgrade.c and answered), then wslay's event context,
 * which reads the frames and writes the control frames (pong, close). The
 * payload of binary messages is MQTT's byte stream (conn_feed): packets
 * may be split across frames and several may share one. wslay answers
 * pings and closes, and closes with 1002 what breaks the protocol (an
 * unmasked frame, a bad opcode, a control frame over 125 bytes or
 * fragmented, a bad close code); here a text message is closed with 1003
 * and a message over max_packet_size plus a fixed header with 1009. A
 * connection that never finishes its handshake meets connect_timeout like
 * any other before its CONNECT.
 *
 * MQTT's output (c->out) is framed here, not by wslay: wslay hands a
 * frame's header and its payload to its send callback in two calls, which
 * under TLS become two records, and takes a message in chunks of its 4 KiB
 * buffer, copying each (wslay_event_queue_msg would copy it whole). A
 * server's frame is unmasked (RFC 6455 5.1), so its header is 2 or 4 bytes
 * that ws_frame_start() writes in front of the payload, in the room c->out
 * keeps there (xport.out_head), and the frame leaves in place with one
 * write, or one SSL_write. What a flush finds in c->out becomes one binary
 * frame of at most WS_FRAME_MAX bytes (under TLS WS_FRAME_MAX_TLS: one
 * record), the rest the next frames; taken from c->out only as it goes,
 * it still counts in max_output_bytes. wslay's control frames are gathered
 * whole into a stage of 127 bytes, and leave in one write too. Frames are
 * never interleaved (ws_output): a staged control frame first, then the
 * rest of the data frame being sent, then wslay's control frames, then a
 * new data frame.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include "http_upgrade.h"
#include "log.h"
#include "worker_int.h"
#include "worker_tls.h"
#include "worker_transport.h"

#define WS_CLOSE_NORMAL 1000
#define WS_CLOSE_UNSUPPORTED 1003
#define WS_CLOSE_TOO_BIG 1009
#define MQTT_FIXED_HEADER_MAX 5
#define WS_FRAME_MAX 65536           /* a data frame's bytes, header included */
#define WS_FRAME_MAX_TLS 16384       /* ... under TLS: one record's (RFC 8446 5.1) */
#define WS_CTL_MAX (2 + 125)         /* a server's control frame (RFC 6455 5.5) */

static_assert(WS_FRAME_MAX - WS_HEAD_MAX <= UINT16_MAX, "a data frame's header is WS_HEAD_MAX");

/* A call into wslay: the connection its callbacks act on, which MQTT may move or close. */
struct ws_call {
	struct worker *w;
	struct conn *c;
	size_t budget;               /* bytes the socket may still give in this call */
	bool drained;                /* the last read took all there was: no read(2) to find nothing */
	bool eof;                    /* the client closed its side */
	int err;                     /* errno of a failed read */
};

struct ws_conn {
	wslay_event_context_ptr ctx; /* NULL until the upgrade is answered */
	struct ws_call *call;        /* the call in progress */
	/* The upgrade request as it comes; after it, the bytes that followed it (from req_off). */
	char *req;
	size_t req_len, req_cap, req_off;
	uint64_t msg_len;            /* bytes of the data message being received */
	size_t frame_left;           /* bytes of the data frame being sent, from c->out->off */
	const char *refused;         /* why the input was refused (a close queued); NULL: fine */
	uint8_t ctl[WS_CTL_MAX];     /* a control frame of wslay's, gathered (on_send) */
	uint8_t ctl_len, ctl_off;    /* its bytes, those sent */
	bool ctl_whole;              /* it is whole: wslay's next waits for it to be sent */
	bool in_data;                /* the frame being received is a binary message's */
	bool busy;                   /* inside wslay: ws_free waits for it to return */
	bool dead;                   /* ws_free was called while busy */
	char path[LISTEN_PATH_MAX];  /* the one path served; "": any */
};

struct ws_conn *ws_new(const char *path)
{
	struct ws_conn *ws = calloc(1, sizeof(*ws));

	if (ws != NULL)
		snprintf(ws->path, sizeof(ws->path), "%s", path);
	return ws;
}

static void ws_destroy(struct ws_conn *ws)
{
	if (ws->ctx != NULL)
		wslay_event_context_free(ws->ctx);
	free(ws->req);
	free(ws);
}

void ws_free(struct ws_conn *ws)
{
	if (ws == NULL)
		return;
	if (ws->busy)
		ws->dead = true;
	else
		ws_destroy(ws);
}

/* The largest message taken: one packet of max_packet_size, read at each frame (reload). */
static uint64_t ws_msg_max(const struct worker *w)
{
	return (uint64_t)w->cfg->max_packet_size + MQTT_FIXED_HEADER_MAX;
}

/* --- wslay's callbacks ---------------------------------------------------- */

/* As worker.c holds a plain connection back: the rest stays in the kernel. */
static bool ws_stop_reading(const struct conn *c)
{
	return c->paused || c->throttled || c->out_full;
}

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
		       void *user)
{
	struct ws_conn *ws = user;
	struct ws_call *k = ws->call;
	ssize_t n;

	if (k->c->state == CS_CLOSED)
		goto would_block;
	/*
	 * What came behind the upgrade request is read first, even while MQTT
	 * holds the connection back: no event would come for it.
	 */
	if (ws->req_off < ws->req_len) {
		n = (ssize_t)MIN(len, ws->req_len - ws->req_off);
		memcpy(buf, ws->req + ws->req_off, (size_t)n);
		ws->req_off += (size_t)n;
		if (ws->req_off == ws->req_len) {
			free(ws->req);
			ws->req = NULL;
			ws->req_len = ws->req_cap = ws->req_off = 0;
		}
		return n;
	}
	if (ws_stop_reading(k->c) || k->budget == 0 || k->drained)
		goto would_block;
	n = xport_lower_read(k->c, buf, MIN(len, k->budget));
	if (n > 0) {
		/*
		 * A short read emptied the socket (under TLS: nothing left read
		 * ahead); what comes later is announced by epoll, so wslay's
		 * next call would only cost a read(2) that finds nothing.
		 */
		k->drained = k->c->xp->tls != NULL ? !tls_conn_buffered(k->c->xp->tls) :
						      (size_t)n < MIN(len, k->budget);
		k->budget -= (size_t)n;
		return n;
	}
	if (n < 0 && errno == EAGAIN)
		goto would_block;
	k->eof = n == 0;
	k->err = n < 0 ? errno : 0;
	wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
	return -1;
would_block:
	wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
	return -1;
}

/* wslay's control frames, gathered whole into the stage, which ws_output sends. */
static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
		       void *user)
{
	struct ws_conn *ws = user;

	if (ws->ctl_whole || len > sizeof(ws->ctl) - ws->ctl_len) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	memcpy(ws->ctl + ws->ctl_len, data, len);
	ws->ctl_len += (uint8_t)len;
	ws->ctl_whole = !(flags & WSLAY_MSG_MORE);
	return (ssize_t)len;
}

/* Close with code; what the client sends from now on is not read. */
static void ws_refuse(struct ws_conn *ws, uint16_t code, const char *why)
{
	if (ws->refused == NULL)
		ws->refused = why;
	(void)wslay_event_queue_close(ws->ctx, code, NULL, 0);
	wslay_event_shutdown_read(ws->ctx);
}

static void on_frame_start(wslay_event_context_ptr ctx,
			   const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
	struct ws_conn *ws = user;

	ws->in_data = false;
	if (arg->opcode == WSLAY_TEXT_FRAME) {
		ws_refuse(ws, WS_CLOSE_UNSUPPORTED, "WebSocket text message (MQTT is binary)");
		return;
	}
	if (arg->opcode == WSLAY_BINARY_FRAME)
		ws->msg_len = 0;
	else if (arg->opcode != WSLAY_CONTINUATION_FRAME)
		return;      /* a control frame, wslay's */
	ws->msg_len += arg->payload_length;
	if (ws->msg_len > ws_msg_max(ws->call->w)) {
		ws_refuse(ws, WS_CLOSE_TOO_BIG, "WebSocket message too big");
		return;
	}
	ws->in_data = true;
}

static void on_frame_chunk(wslay_event_context_ptr ctx,
			   const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user)
{
	struct ws_conn *ws = user;
	struct ws_call *k = ws->call;

	if (!ws->in_data || ws->refused != NULL || arg->data_length == 0 ||
	    k->c->state == CS_CLOSED)
		return;
	if (!conn_feed(k->w, &k->c, arg->data, arg->data_length))
		wslay_event_shutdown_read(ctx);      /* closed: nothing more to read */
}

static const struct wslay_event_callbacks ws_callbacks = {
	.recv_callback = on_recv,
	.send_callback = on_send,
	.on_frame_recv_start_callback = on_frame_start,
	.on_frame_recv_chunk_callback = on_frame_chunk,
};

/* --- output --------------------------------------------------------------- */

/*
 * The next data frame: c->out's unsent bytes, up to the frame's bound,
 * behind a header written in the WS_HEAD_MAX bytes in front of them. They
 * are free: c->out starts that far in and is compacted to there
 * (xport.out_head), and a frame ends further on than where it starts.
 */
static void ws_frame_start(struct ws_conn *ws, struct conn *c)
{
	struct buf *b = c->out;
	size_t max = c->xp->transport == LISTEN_WSS ? WS_FRAME_MAX_TLS : WS_FRAME_MAX;
	size_t n = MIN(buf_held(b), max - WS_HEAD_MAX);
	size_t head = n < 126 ? 2 : 4;
	uint8_t *h = b->data + (b->off -= head);

	h[0] = 0x80 | WSLAY_BINARY_FRAME;    /* FIN: each frame a whole message */
	if (head == 2) {
		h[1] = (uint8_t)n;
	} else {
		h[1] = 126;
		h[2] = (uint8_t)(n >> 8);
		h[3] = (uint8_t)n;
	}
	ws->frame_left = head + n;
}

/* Bytes to the layer below: how many went, 0 when it would block, -1 when broken (errno). */
static ssize_t ws_write(struct conn *c, const uint8_t *data, size_t len)
{
	ssize_t n = xport_lower_write(c, data, len);

	if (n < 0 && errno == EAGAIN)
		return 0;
	if (n == 0)
		errno = EPIPE;       /* TLS closed */
	return n > 0 ? n : -1;
}

/*
 * Whole frames out, in their order (see the top): 1 when all went, 0 when
 * the socket is full, -1 when it broke (*err its errno, or 0: wslay's).
 */
static int ws_output(struct ws_conn *ws, struct conn *c, int *err)
{
	ssize_t n;

	for (;;) {
		if (ws->ctl_off < ws->ctl_len) {
			if ((n = ws_write(c, ws->ctl + ws->ctl_off, ws->ctl_len - ws->ctl_off)) <= 0)
				goto blocked;
			ws->ctl_off += (uint8_t)n;
			if (ws->ctl_off == ws->ctl_len) {
				ws->ctl_off = ws->ctl_len = 0;
				ws->ctl_whole = false;
			}
		} else if (ws->frame_left > 0) {
			if ((n = ws_write(c, c->out->data + c->out->off, ws->frame_left)) <= 0)
				goto blocked;
			c->out->off += (size_t)n;
			ws->frame_left -= (size_t)n;
		} else if (wslay_event_want_write(ws->ctx)) {
			*err = 0;
			if (wslay_event_send(ws->ctx) != 0 || ws->ctl_len == 0)
				return -1;     /* nothing staged: wslay is broken */
		} else if (buf_held(c->out) > 0 && wslay_event_get_write_enabled(ws->ctx)) {
			ws_frame_start(ws, c);
		} else {
			return 1;
		}
	}
blocked:
	*err = errno;
	return n < 0 ? -1 : 0;
}

bool ws_flush(struct worker *w, struct conn *c)
{
	struct ws_conn *ws = c->xp->ws;
	int err, rc;

	if (ws->ctx == NULL)
		return true;      /* no MQTT before the upgrade: nothing to send */
	if ((rc = ws_output(ws, c, &err)) < 0) {
		conn_close(w, c, true, err ? strerror(err) : "WebSocket send failed");
		return false;
	}
	conn_flushed(w, c, rc == 0);
	return true;
}

/* conn_close's: MQTT's last bytes and a close frame, if the socket takes them now. */
void ws_last_write(struct worker *w, struct conn *c)
{
	struct ws_conn *ws = c->xp->ws;
	int err;

	if (ws->ctx == NULL || ws_output(ws, c, &err) < 0)
		return;
	(void)wslay_event_queue_close(ws->ctx, WS_CLOSE_NORMAL, NULL, 0);
	(void)ws_output(ws, c, &err);
}

/* --- input ---------------------------------------------------------------- */

/*
 * wslay answers a frame its frame layer refuses (a control frame over 125
 * bytes or fragmented, a length in the wrong form) with a close frame that
 * has no code: 1002 is sent in its place when no frame of ours is partly
 * sent (idle: nothing was left to send before it read), the stream then
 * being between frames.
 */
static void ws_frame_refused(struct ws_conn *ws, struct conn *c, bool idle)
{
	static const uint8_t close_1002[] = { 0x88, 0x02, 0x03, 0xea };

	if (!idle)
		return;
	wslay_event_shutdown_write(ws->ctx);
	(void)xport_lower_write(c, close_1002, sizeof(close_1002));
}

/* Frames from the socket (after what followed the upgrade request), through wslay. */
static void ws_run(struct worker *w, struct conn *c, struct ws_conn *ws)
{
	struct ws_call k = { .w = w, .c = c, .budget = READ_CHUNK };
	bool idle = ws->ctl_len == 0 && ws->frame_left == 0 && !wslay_event_want_write(ws->ctx);
	char why[96];
	int rc;

	ws->call = &k;
	ws->busy = true;
	wslay_event_config_set_max_recv_msg_length(ws->ctx, ws_msg_max(w));
	rc = wslay_event_recv(ws->ctx);
	ws->busy = false;
	ws->call = NULL;
	if (ws->dead) {
		ws_destroy(ws);   /* MQTT closed the connection meanwhile */
		return;
	}
	c = k.c;
	if (rc == WSLAY_ERR_CALLBACK_FAILURE && !k.eof && !k.err) {
		ws_frame_refused(ws, c, idle);
		conn_close(w, c, true, "WebSocket protocol error (close 1002)");
		return;
	}
	if (rc != 0) {
		conn_close(w, c, true, k.eof ? "connection closed by client" :
			   k.err ? strerror(k.err) : "WebSocket: out of memory");
		return;
	}
	if (!ws_flush(w, c) || wslay_event_want_read(ws->ctx))
		return;
	/* The input is over: the client's close answered, or ours sent. */
	if (ws->refused != NULL)
		snprintf(why, sizeof(why), "%s (close %u)", ws->refused,
			 wslay_event_get_status_code_sent(ws->ctx));
	else if (wslay_event_get_close_received(ws->ctx))
		snprintf(why, sizeof(why), "WebSocket closed by client (code %u)",
			 wslay_event_get_status_code_received(ws->ctx));
	else
		snprintf(why, sizeof(why), "WebSocket protocol error (close %u)",
			 wslay_event_get_status_code_sent(ws->ctx));
	conn_close(w, c, true, why);
}

/* wslay's context, once the upgrade is answered. */
static int ws_start(struct ws_conn *ws)
{
	if (wslay_event_context_server_init(&ws->ctx, &ws_callbacks, ws) != 0)
		return -1;
	/* The payload goes to MQTT as it comes: wslay holds no message. */
	wslay_event_config_set_no_buffering(ws->ctx, 1);
	return 0;
}

/* The answer to a whole upgrade request: 101 and wslay, or an error and the close. */
static void ws_answer(struct worker *w, struct conn *c, struct ws_conn *ws,
		      const struct http_upgrade *u)
{
	char resp[256], why[128];
	size_t n = http_upgrade_response(u, resp, sizeof(resp));

	if (xport_lower_write(c, resp, n) != (ssize_t)n) {
		conn_close(w, c, false, "cannot send the WebSocket upgrade's answer");
		return;
	}
	if (u->status != HTTP_UPGRADE_SWITCHING) {
		snprintf(why, sizeof(why), "WebSocket upgrade refused with %d: %s", (int)u->status,
			 u->why);
		conn_close(w, c, false, why);
		return;
	}
	if (ws_start(ws) < 0) {
		conn_close(w, c, false, "out of memory for a WebSocket");
		return;
	}
	log_debug("WebSocket from %s (subprotocol %s)", c->remote, u->protocol);
	ws->req_off = u->length;
	if (ws->req_off < ws->req_len)
		ws_run(w, c, ws);       /* frames sent right behind the request */
	else {
		free(ws->req);
		ws->req = NULL;
		ws->req_len = ws->req_cap = ws->req_off = 0;
	}
}

/* The opening handshake: the request gathered, bounded, then answered. */
static void ws_upgrade_read(struct worker *w, struct conn *c, struct ws_conn *ws)
{
	size_t max = (size_t)w->cfg->max_http_request_size;
	struct http_upgrade u;
	ssize_t n;

	/* Holding max already (a reload lowered it): the parse answers 431 without reading. */
	if (ws->req_len < max) {
		if (ws->req_cap < max) {
			char *req = realloc(ws->req, max);

			if (req == NULL) {
				conn_close(w, c, false, "out of memory");
				return;
			}
			ws->req = req;
			ws->req_cap = max;
		}
		n = xport_lower_read(c, ws->req + ws->req_len, max - ws->req_len);
		if (n <= 0) {
			if (n < 0 && errno == EAGAIN)
				return;
			conn_close(w, c, false, n == 0 ? "connection closed by client" :
				   strerror(errno));
			return;
		}
		ws->req_len += (size_t)n;
	}
	http_upgrade_parse(ws->req, ws->req_len, max, ws->path, &u);
	if (u.status != HTTP_UPGRADE_INCOMPLETE)
		ws_answer(w, c, ws, &u);
}

void ws_read(struct worker *w, struct conn *c)
{
	struct ws_conn *ws = c->xp->ws;

	if (ws->ctx == NULL)
		ws_upgrade_read(w, c, ws);
	else
		ws_run(w, c, ws);
}
