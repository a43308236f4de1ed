/*
 * worker_auth.c - a worker's side of authentication.
 *
 * With the auth role in use (config_auth_role), a valid CONNECT is held
 * (CS_AUTHENTICATING, not read) while its credentials are with the auth
 * role: this file owns those held CONNECTs (at most auth.max_pending;
 * past it CONNACK 3), the requests they sent over the auth channel (kept,
 * to be sent again when a new auth process greets us with
 * IPC_AUTH_HELLO) and the verdicts that come back: refused, CONNACK 4, 5
 * or 3 and close; accepted, the CONNECT goes to the router as it would
 * have, under the user name the verdict gives, and the connection takes
 * the client's view of the ACL (conn_set_rules): a token's lists, or one
 * made from the verdict's topic rules and the patterns the auth role
 * sends once per generation of the ACL (IPC_AUTH_PATTERNS; this file
 * owns them and the rules the views share, an acl_views store), until
 * IPC_AUTH_RULES_STALE says the router took a later one. A connection that
 * closes while the auth role has its request cancels it
 * (IPC_AUTH_CANCEL); a verdict for a connection that is gone is dropped.
 * A full channel is written again on its EPOLLOUT.
 *
 * MQTT 5's enhanced authentication (SCRAM-SHA-256, scram.h) goes the
 * same way in two steps under one ticket: CONNECT's client-first is the
 * first request; its answer (IPC_AUTH_CONTINUE) is sent to the client in
 * AUTH 0x18 and the connection read again for the client's AUTH alone,
 * whose client-final is the second request; that one's verdict ends it as
 * a password's would, server-final kept for the CONNACK. The exchange
 * lives in the auth role; a worker keeps no secret of it. Also owns w->acl_in_force, set
 * from the configuration. Without the auth role, the secure
 * default is applied here: only loopback clients, unless
 * auth.allow_anonymous.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "log.h"
#include "scram.h"
#include "worker_int.h"

#define VERDICTS_PER_WAKE 64

/*
 * One CONNECT held for its verdict; its ticket is its index in waits[].
 * A connection that closes after its request went keeps its slot, as a
 * cancel, until IPC_AUTH_CANCEL is sent (or its verdict comes first).
 */
struct auth_wait {
	conn_id_t conn;
	void *req;                   /* the request as sent, to send again; NULL for a cancel */
	size_t req_len;
	bool sent;                   /* the request, or the cancel */
	bool cancel;                 /* the connection is gone: IPC_AUTH_CANCEL to send */
	bool scram;                  /* a SCRAM exchange, not a password */
	bool awaiting_client;        /* server-first sent: the client's AUTH is awaited */
	bool reauth;                 /* a connected client's re-authentication */
	uint64_t deadline_ms;        /* a re-authentication's end at the latest */
	struct rec_connect rc;       /* the CONNECT record but its user name; will bytes below */
	uint8_t will[];
};

struct worker_auth {
	struct ipc_dispatcher in;
	int fd;
	bool registered;             /* the channel is in the worker's epoll */
	bool want_out;
	bool full;                   /* an episode of refusals past auth.max_pending, logged */
	struct auth_wait **waits;
	uint32_t cap, held, unsent;
	struct acl_views *views;     /* the ACL's patterns, and what views share */
};

static struct worker_auth *wa_of(struct worker *w)
{
	return w->auth;
}

/* The request's bytes go; the password is a secret: not left in freed memory. */
static void wait_drop_request(struct auth_wait *aw)
{
	if (aw->req != NULL)
		explicit_bzero(aw->req, aw->req_len);
	free(aw->req);
	aw->req = NULL;
	aw->req_len = 0;
}

/* Take the slot of ticket out of the table: its ticket is free again. */
static struct auth_wait *wait_take(struct worker_auth *wa, uint32_t ticket)
{
	struct auth_wait *aw = wa->waits[ticket];

	if (!aw->sent)
		wa->unsent--;
	wa->waits[ticket] = NULL;
	wa->held--;
	return aw;
}

static void wait_destroy(struct auth_wait *aw)
{
	wait_drop_request(aw);
	free(aw);
}

static void wait_free(struct worker_auth *wa, uint32_t ticket)
{
	wait_destroy(wait_take(wa, ticket));
}

static void set_out(struct worker *w, struct worker_auth *wa, bool want)
{
	struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0),
				  .data.ptr = &w->env->auth_chan_worker[w->index] };

	if (wa->want_out == want || !wa->registered)
		return;
	wa->want_out = want;
	if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, wa->fd, &ev) < 0)
		log_warn("epoll_ctl: %s", strerror(errno));
}

/* Send ticket t's request, or its cancel (and then free its slot). */
static int wait_send(struct worker *w, struct worker_auth *wa, uint32_t t)
{
	struct auth_wait *aw = wa->waits[t];
	struct ipc_auth_cancel cancel = { .conn = aw->conn, .ticket = t };

	if (!aw->cancel) {
		if (ipc_send(wa->fd, IPC_AUTH_REQUEST, w->index, aw->req, aw->req_len, -1) < 0)
			return -1;
		aw->sent = true;
		wa->unsent--;
		return 0;
	}
	if (ipc_send(wa->fd, IPC_AUTH_CANCEL, w->index, &cancel, sizeof(cancel), -1) < 0)
		return -1;
	wait_free(wa, t);
	return 0;
}

/* Send every request and cancel not yet sent, as far as the channel takes them. */
static void flush_now(struct worker *w, struct worker_auth *wa)
{
	for (uint32_t t = 0; t < wa->cap && wa->unsent > 0; t++) {
		if (wa->waits[t] == NULL || wa->waits[t]->sent)
			continue;
		if (wait_send(w, wa, t) < 0) {
			if (errno != EAGAIN)
				log_error("cannot send to the auth role: %s", strerror(errno));
			set_out(w, wa, true);
			return;
		}
	}
	set_out(w, wa, false);
}

/*
 * What waits to be sent goes now, unless the channel was found full: then
 * its EPOLLOUT sends it (worker_auth_event), not every turn of the loop.
 */
void worker_auth_flush(struct worker *w)
{
	struct worker_auth *wa = wa_of(w);

	if (wa == NULL || wa->unsent == 0 || wa->want_out)
		return;
	flush_now(w, wa);
}

/* --- the verdicts --------------------------------------------------------- */

/*
 * The view an accepted verdict gives its connection: a token's lists
 * (whole), or its topic rules under the patterns it was made for, with
 * the verdict's user name (empty: none) and the client id put into them.
 * Rules that do not decode leave it without one (logged).
 */
static struct acl_client *verdict_view(struct worker_auth *wa, const struct conn *c,
				       const struct ipc_auth_fields *f)
{
	const char *cid = conn_client_id(c);
	struct acl_client *view;
	char err[160];

	if (f->rules_len == 0)
		return NULL;
	if (f->rules_from_token)
		view = acl_client_decode(f->rules, f->rules_len, err, sizeof(err));
	else
		view = acl_views_client(wa->views, f->rules, f->rules_len,
					f->user_len ? f->user : NULL, f->user_len, cid, strlen(cid),
					err, sizeof(err));
	if (view == NULL)
		log_client(LOG_LVL_ERROR, cid, c->remote,
			   "its ACL rules are refused (%s): its messages go through the router", err);
	return view;
}

/*
 * An AUTH packet to c: reason, SCRAM's method and data. False when it
 * would exceed the client's Maximum Packet Size: it is not sent (MQTT 5
 * 3.1.2.11.4), and the exchange cannot go on without it.
 */
static bool send_auth(struct worker *w, struct conn *c, uint8_t reason, const uint8_t *data,
		      size_t len)
{
	const struct conn_v5 *v = CONN_V5(w, c);
	size_t size;
	uint8_t buf[2 * IPC_AUTH_DATA_MAX + 64], *p;
	struct mqtt5_pbuf b;
	struct mqtt5_out out;

	mqtt5_pbuf_init(&b, buf, sizeof(buf));
	mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_METHOD, (const uint8_t *)SCRAM_METHOD,
		       strlen(SCRAM_METHOD));
	mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_DATA, data, len);
	mqtt5_out_init(&out, b.p, b.len, NULL, 0);
	size = mqtt5_reason_size(reason, &out);
	if (v != NULL && v->max_packet && size > v->max_packet)
		return false;
	if ((p = out_reserve(w, c, size)) != NULL)
		mqtt5_encode_reason(p, MQTT_AUTH, reason, &out);
	return true;
}

/* A connected client's exchange failed or cannot go on: its connection ends. */
static void reauth_fail(struct worker *w, struct conn *c, const char *why)
{
	conn_disconnect(w, c, MQTT5_RC_NOT_AUTHORIZED, true, why);
}

/* An exchange that cannot go on: refused before CONNACK, disconnected after. */
static void exchange_fail(struct worker *w, struct conn *c, const char *why)
{
	if (c->state == CS_ACTIVE)
		reauth_fail(w, c, why);
	else
		conn_refuse(w, c, MQTT_CONNACK_UNAVAILABLE, why);
}

/*
 * server-first came: to the client in AUTH 0x18, and c is read again, for
 * its AUTH (handle_packet refuses anything else). The slot stays, its
 * request sent and answered, until the client's step is sent under it.
 */
static void on_continue(struct worker *w, struct conn *c, struct auth_wait *aw,
			const struct ipc_auth_fields *f)
{
	wait_drop_request(aw);
	aw->awaiting_client = true;
	if (!send_auth(w, c, MQTT5_RC_CONTINUE_AUTHENTICATION, f->data, f->data_len)) {
		exchange_fail(w, c, "SCRAM's AUTH packet exceeds the client's maximum packet size");
		return;
	}
	if (aw->reauth)
		return;              /* connected: read all along */
	c->paused = false;
	if (c->in_off)
		conn_set_events(w, c);
	if (buf_held(c->in) > 0)
		conn_process_input(w, c);
}

/*
 * SCRAM's server-final, for the CONNACK that ends the exchange, and the
 * user name, for re-authentications; false when out of memory.
 */
static bool keep_server_final(struct worker *w, struct conn *c, const struct ipc_auth_fields *f)
{
	struct conn_v5 *v = CONN_V5(w, c);

	struct conn_scram *s;

	if (v == NULL || conn_v5_scram(v) != NULL || f->data_len == 0 || f->data_len > UINT16_MAX ||
	    f->user_len > UINT16_MAX || conn_v5_hold(v) == NULL ||
	    (s = malloc(sizeof(*s) + f->user_len + 1)) == NULL)
		return false;
	if ((s->final = malloc(f->data_len)) == NULL) {
		free(s);
		return false;
	}
	memcpy(s->final, f->data, f->data_len);
	s->final_len = (uint16_t)f->data_len;
	memcpy(s->user, f->user, f->user_len);
	s->user[f->user_len] = '\0';
	s->user_len = (uint16_t)f->user_len;
	v->held->scram = s;
	return true;
}

/*
 * A re-authentication's verdict: AUTH 0x00 with server-final when it
 * names the same user, else the connection ends (DISCONNECT 0x87).
 */
static void reauth_end(struct worker *w, struct conn *c, const struct ipc_auth_fields *f)
{
	struct conn_v5 *v = CONN_V5(w, c);

	v->reauth = false;
	if (f->code != MQTT_CONNACK_ACCEPTED || f->cont || f->data_len == 0)
		reauth_fail(w, c, "re-authentication refused");
	else if (f->user_len != conn_v5_scram(v)->user_len ||
		 memcmp(f->user, conn_v5_scram(v)->user, f->user_len) != 0)
		reauth_fail(w, c, "re-authentication as another user");
	else if (!send_auth(w, c, MQTT5_RC_SUCCESS, f->data, f->data_len))
		reauth_fail(w, c, "SCRAM's AUTH packet exceeds the client's maximum packet size");
}

static void on_verdict_fields(struct worker *w, const struct ipc_auth_fields *f)
{
	struct worker_auth *wa = wa_of(w);
	struct conn *c = conn_lookup(w, f->conn);
	struct auth_wait *aw;
	struct rec_connect rc;

	if (f->ticket >= wa->cap || (aw = wa->waits[f->ticket]) == NULL || aw->conn != f->conn)
		return;              /* answered already */
	if (aw->cancel || c == NULL || c->state != (aw->reauth ? CS_ACTIVE : CS_AUTHENTICATING)) {
		wait_free(wa, f->ticket);    /* gone: no cancel needed any more */
		return;
	}
	if (aw->awaiting_client)
		return;              /* not asked: the client's step is awaited */
	if (f->cont && aw->scram && f->data_len > 0) {
		on_continue(w, c, aw, f);
		return;
	}
	/* Out of the table first: the connection may close below, and has nothing to cancel. */
	aw = wait_take(wa, f->ticket);
	if (aw->reauth) {
		reauth_end(w, c, f);
	} else if (f->code == MQTT_CONNACK_ACCEPTED && aw->scram && !keep_server_final(w, c, f)) {
		conn_refuse(w, c, MQTT_CONNACK_UNAVAILABLE, "SCRAM accepted without server-final, "
			    "or out of memory");
	} else if (f->code != MQTT_CONNACK_ACCEPTED || f->cont) {
		conn_refuse(w, c, f->code == MQTT_CONNACK_BAD_AUTH ||
			    f->code == MQTT_CONNACK_NOT_AUTHORIZED ? f->code : MQTT_CONNACK_UNAVAILABLE,
			    "authentication refused");
	} else {
		conn_set_rules(w, c, verdict_view(wa, c, f));
		c->rules_from_token = f->rules_from_token;
		rc = aw->rc;
		rc.user = (struct rec_str){ (const uint8_t *)f->user, (uint16_t)f->user_len };
		connect_forward(w, c, &rc);
	}
	wait_destroy(aw);
}

/* IPC_AUTH_VERDICT */
static int on_verdict(void *ctx, struct ipc_msg *m)
{
	struct ipc_auth_fields f;

	if (!ipc_auth_verdict_decode(m->data, m->hdr.len, &f)) {
		log_warn("a malformed verdict from the auth role; dropped");
		return 0;
	}
	on_verdict_fields(ctx, &f);
	return 0;
}

/*
 * Every connection's view made from the file before generation (a
 * token's lists stay: they come from the token, not the file) goes:
 * those connections' messages go through the router until they connect
 * again.
 */
static void views_drop(struct worker *w, uint64_t generation, const char *why)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < w->n_slots; i++) {
		struct conn *c = w->slots[i];

		if (c == NULL || c->acl == NULL || c->rules_from_token ||
		    acl_client_generation(c->acl) >= generation)
			continue;
		conn_set_rules(w, c, NULL);
		n++;
	}
	if (n > 0)
		log_info("%s: %u connections' messages go through the router until they connect "
			 "again", why, n);
}

/*
 * IPC_AUTH_HELLO: a new auth process; what the old one had read is lost.
 * Its generations count from 1 again: the views and patterns of the old
 * one go.
 */
static int on_hello(void *ctx, struct ipc_msg *m)
{
	struct worker *w = ctx;
	struct worker_auth *wa = wa_of(w);

	views_drop(w, UINT64_MAX, "a new auth process");
	acl_views_forget(wa->views);

	/* A cancel not sent yet is sent still: its request may wait in the socket. */
	for (uint32_t t = 0; t < wa->cap; t++) {
		struct auth_wait *aw = wa->waits[t];
		struct conn *c;

		/* A SCRAM exchange waiting for its client went with the old process: it fails. */
		if (aw != NULL && aw->awaiting_client) {
			c = conn_lookup(w, aw->conn);
			wait_free(wa, t);
			if (c != NULL)
				exchange_fail(w, c, "the auth role restarted during its SCRAM exchange");
			continue;
		}
		if (aw != NULL && aw->sent) {
			aw->sent = false;
			wa->unsent++;
		}
	}
	if (wa->held > 0)
		log_info("the auth role restarted: sending its %u requests again", wa->held);
	worker_auth_flush(w);
	return 0;
}

/*
 * IPC_AUTH_RULES_STALE: the router has the ACL of this generation; views
 * made from older ones go.
 */
static int on_rules_stale(void *ctx, struct ipc_msg *m)
{
	uint64_t generation;

	memcpy(&generation, m->data, sizeof(generation));
	views_drop(ctx, generation, "the ACL changed");
	return 0;
}

/*
 * IPC_AUTH_PATTERNS: the patterns of the ACL's next generation, for the
 * verdicts after it. Patterns that do not decode leave none: the views
 * that need them are not made (their messages go through the router).
 */
static int on_patterns(void *ctx, struct ipc_msg *m)
{
	struct worker *w = ctx;
	char err[160];

	if (acl_views_set_patterns(wa_of(w)->views, m->data, m->hdr.len, err, sizeof(err)) < 0)
		log_error("the ACL's patterns from the auth role are refused (%s): the clients they "
			  "apply to go through the router", err);
	return 0;
}

static const struct ipc_handler from_auth[IPC_TYPE_MAX] = {
	[IPC_AUTH_RULES_STALE] = { .fn = on_rules_stale, IPC_LEN(sizeof(uint64_t)) },
	[IPC_AUTH_PATTERNS] = { .fn = on_patterns, .max_len = IPC_MAX_PAYLOAD },
	[IPC_AUTH_VERDICT] = { .fn = on_verdict, .min_len = sizeof(struct ipc_auth_verdict),
			       .max_len = IPC_MAX_PAYLOAD },
	[IPC_AUTH_HELLO] = { .fn = on_hello },
};

void worker_auth_event(struct worker *w, uint32_t events)
{
	struct worker_auth *wa = wa_of(w);

	if (events & EPOLLOUT)
		flush_now(w, wa);
	if (events & EPOLLIN)
		ipc_dispatch(wa->fd, &wa->in, w, VERDICTS_PER_WAKE);
}

/* --- holding a CONNECT ------------------------------------------------------ */

/* The secure default without the auth role: loopback clients only, unless allow_anonymous. */
bool worker_auth_loopback_ok(struct worker *w, struct conn *c, const char *user, size_t ulen)
{
	if (w->cfg->auth_allow_anonymous || addr_remote_is_loopback(c->remote))
		return true;
	log_auth_refusal(conn_client_id(c), strlen(conn_client_id(c)), c->remote, user, ulen,
			 MQTT_CONNACK_NOT_AUTHORIZED, "not a loopback client, no auth.backend, and "
			 "auth.allow_anonymous is false");
	return false;
}

static struct auth_wait *wait_new(const struct rec_connect *rc)
{
	size_t tlen = rc->will_topic.len, plen = rc->will_payload.len;
	struct auth_wait *aw = malloc(sizeof(*aw) + tlen + plen + rc->will_props.len);

	if (aw == NULL)
		return NULL;
	*aw = (struct auth_wait){ .rc = *rc };
	/* Empty fields may point nowhere. */
	if (tlen > 0)
		memcpy(aw->will, rc->will_topic.p, tlen);
	if (plen > 0)
		memcpy(aw->will + tlen, rc->will_payload.p, plen);
	if (rc->will_props.len > 0)
		memcpy(aw->will + tlen + plen, rc->will_props.p, rc->will_props.len);
	aw->rc.will_topic.p = aw->will;
	aw->rc.will_payload.p = aw->will + tlen;
	aw->rc.will_props.p = aw->will + tlen + plen;
	/* The verdict's, when the record is written. */
	aw->rc.user = (struct rec_str){ NULL, 0 };
	return aw;
}

/* A free ticket, the table grown up to max_pending; false when it is full. */
static bool ticket_take(struct worker *w, struct worker_auth *wa, uint32_t *t)
{
	uint32_t max = (uint32_t)w->cfg->auth_max_pending;

	for (uint32_t i = 0; i < wa->cap && i < max; i++)
		if (wa->waits[i] == NULL) {
			*t = i;
			return true;
		}
	if (wa->cap < max) {
		uint32_t cap = MIN(max, wa->cap ? wa->cap * 2 : 16);
		struct auth_wait **waits = reallocarray(wa->waits, cap, sizeof(*waits));

		if (waits == NULL)
			return false;
		memset(waits + wa->cap, 0, (cap - wa->cap) * sizeof(*waits));
		*t = wa->cap;
		wa->waits = waits;
		wa->cap = cap;
		return true;
	}
	return false;
}

/* A request into its slot, to be sent (worker_auth_flush); false when out of memory. */
static bool wait_request(struct worker_auth *wa, struct auth_wait *aw,
			 const struct ipc_auth_fields *f)
{
	if ((aw->req = ipc_auth_request_encode(f, &aw->req_len)) == NULL)
		return false;
	aw->sent = false;
	wa->unsent++;
	return true;
}

bool worker_auth_method_ok(const struct worker *w, const struct mqtt_str *method)
{
	return config_auth_role(w->cfg) && strcmp(w->cfg->auth_backend, "file") == 0 &&
	       method->len == strlen(SCRAM_METHOD) &&
	       memcmp(method->p, SCRAM_METHOD, method->len) == 0;
}

/*
 * Hold c's CONNECT (rc, without its user name) and ask the auth role:
 * about its password, or (scram_first) the first step of its SCRAM
 * exchange. Returns false when it cannot be held (c was answered and
 * closed).
 */
bool worker_auth_hold(struct worker *w, struct conn *c, const struct mqtt_connect *ck,
		      bool from_cert, const struct rec_connect *rc,
		      const struct mqtt_str *scram_first)
{
	struct worker_auth *wa = wa_of(w);
	struct ipc_auth_fields f = {
		.conn = c->id, .has_user = ck->username_flag, .has_password = ck->password_flag,
		.user_from_cert = from_cert,
		.remote = c->remote, .remote_len = c->remote_len,
		.client_id = conn_client_id(c), .client_id_len = strlen(conn_client_id(c)),
		.user = (const char *)ck->username.p, .user_len = ck->username_flag ? ck->username.len : 0,
		.password = ck->password.p, .password_len = ck->password_flag ? ck->password.len : 0,
	};
	struct auth_wait *aw = NULL;
	uint32_t t;

	if (scram_first != NULL) {
		/* The exchange says who the client is; CONNECT's user name and password are not used. */
		if (scram_first->len > IPC_AUTH_DATA_MAX) {
			conn_refuse(w, c, MQTT_CONNACK_NOT_AUTHORIZED, "SCRAM client-first longer "
				    "than its bound");
			return false;
		}
		f.has_user = f.has_password = false;
		f.user_len = f.password_len = 0;
		f.scram_step = IPC_AUTH_SCRAM_FIRST;
		f.data = scram_first->p;
		f.data_len = scram_first->len;
	}
	if (!ticket_take(w, wa, &t)) {
		if (!wa->full)
			log_warn("%u CONNECTs wait for the auth role (auth.max_pending); answering "
				 "CONNACK 3 until they drain", wa->held);
		wa->full = true;
		goto unavailable;
	}
	if (wa->held == 0)
		wa->full = false;
	f.ticket = t;
	aw = wait_new(rc);
	if (aw == NULL)
		goto oom;
	aw->conn = c->id;
	aw->scram = scram_first != NULL;
	if (!wait_request(wa, aw, &f))
		goto oom;
	wa->waits[t] = aw;
	wa->held++;
	c->state = CS_AUTHENTICATING;
	worker_auth_flush(w);
	return true;
oom:
	log_client(LOG_LVL_ERROR, conn_client_id(c), c->remote,
		   "cannot ask the auth role (out of memory)");
	free(aw);
unavailable:
	conn_refuse(w, c, MQTT_CONNACK_UNAVAILABLE, "cannot authenticate now");
	return false;
}

/* The slot of c's exchange that waits for the client's step; NULL when there is none. */
static struct auth_wait *wait_of_exchange(struct worker_auth *wa, const struct conn *c,
					  uint32_t *t)
{
	for (uint32_t i = 0; wa != NULL && i < wa->cap; i++)
		if (wa->waits[i] != NULL && wa->waits[i]->conn == c->id &&
		    wa->waits[i]->awaiting_client) {
			*t = i;
			return wa->waits[i];
		}
	return NULL;
}

/*
 * Before CONNACK a protocol error is answered in CONNACK; after it, in
 * DISCONNECT [MQTT-4.13.2-1].
 */
static enum pkt_result auth_protocol_error(struct worker *w, struct conn *c, uint8_t reason,
					   const char *why)
{
	if (c->state == CS_ACTIVE) {
		conn_disconnect(w, c, reason, true, why);
	} else {
		send_connack5(w, c, false, reason, NULL);
		conn_close(w, c, false, why);
	}
	return PKT_CLOSED;
}

/* AUTH's method is SCRAM-SHA-256. */
static bool auth_method_scram(const struct mqtt5_props *props)
{
	return mqtt5_props_has(props, MQTT5_PROP_AUTH_METHOD) &&
	       props->auth_method.len == strlen(SCRAM_METHOD) &&
	       memcmp(props->auth_method.p, SCRAM_METHOD, props->auth_method.len) == 0;
}

/*
 * AUTH 0x19 from a client SCRAM authenticated: its exchange begins again,
 * its connection working meanwhile; one at a time, for connect_timeout
 * at most (worker_auth_tick).
 */
static enum pkt_result reauth_begin(struct worker *w, struct conn *c,
				    const struct mqtt5_packet *p5)
{
	struct worker_auth *wa = wa_of(w);
	struct conn_v5 *v = CONN_V5(w, c);
	const struct rec_connect none = { 0 };
	struct ipc_auth_fields f = {
		.conn = c->id, .remote = c->remote, .remote_len = c->remote_len,
		.client_id = conn_client_id(c), .client_id_len = strlen(conn_client_id(c)),
		.scram_step = IPC_AUTH_SCRAM_FIRST, .reauth = true,
		.data = p5->props.auth_data.p, .data_len = p5->props.auth_data.len,
	};
	struct auth_wait *aw;
	uint32_t t;

	if (f.data_len > IPC_AUTH_DATA_MAX) {
		reauth_fail(w, c, "SCRAM client-first longer than its bound");
		return PKT_CLOSED;
	}
	if (!ticket_take(w, wa, &t)) {
		conn_disconnect(w, c, MQTT5_RC_SERVER_BUSY, true,
				"re-authentication: too many waiting for the auth role (auth.max_pending)");
		return PKT_CLOSED;
	}
	f.ticket = t;
	if ((aw = wait_new(&none)) == NULL || !wait_request(wa, aw, &f)) {
		free(aw);
		reauth_fail(w, c, "cannot ask the auth role (out of memory)");
		return PKT_CLOSED;
	}
	aw->conn = c->id;
	aw->scram = aw->reauth = true;
	aw->deadline_ms = w->now_ms + (uint64_t)w->cfg->connect_timeout * 1000;
	wa->waits[t] = aw;
	wa->held++;
	v->reauth = true;
	worker_auth_flush(w);
	return PKT_OK;
}

enum pkt_result worker_auth_packet(struct worker *w, struct conn *c,
				   const struct mqtt5_packet *p5)
{
	struct worker_auth *wa = wa_of(w);
	struct conn_v5 *v = CONN_V5(w, c);
	const struct mqtt5_props *props = &p5->props;
	struct ipc_auth_fields f = {
		.conn = c->id, .remote = c->remote, .remote_len = c->remote_len,
		.client_id = conn_client_id(c), .client_id_len = strlen(conn_client_id(c)),
		.scram_step = IPC_AUTH_SCRAM_FINAL,
	};
	struct auth_wait *aw;
	uint32_t t;

	if ((aw = wait_of_exchange(wa, c, &t)) == NULL) {
		if (c->state == CS_ACTIVE && v != NULL && conn_v5_scram(v) != NULL && !v->reauth &&
		    p5->reason == MQTT5_RC_REAUTHENTICATE && auth_method_scram(props))
			return reauth_begin(w, c, p5);
		return auth_protocol_error(w, c, MQTT5_RC_PROTOCOL_ERROR,
					   "AUTH without an exchange in progress");
	}
	if (p5->reason != MQTT5_RC_CONTINUE_AUTHENTICATION || !auth_method_scram(props))
		return auth_protocol_error(w, c, MQTT5_RC_PROTOCOL_ERROR,
					   "AUTH not continuing the exchange's method");
	if (props->auth_data.len > IPC_AUTH_DATA_MAX) {
		exchange_fail(w, c, "SCRAM client-final longer than its bound");
		return PKT_CLOSED;
	}
	f.ticket = t;
	f.data = props->auth_data.p;
	f.data_len = props->auth_data.len;
	aw->awaiting_client = false;
	aw->sent = true;             /* wait_request counts it unsent again */
	if (!wait_request(wa, aw, &f)) {
		exchange_fail(w, c, "cannot ask the auth role (out of memory)");
		return PKT_CLOSED;
	}
	worker_auth_flush(w);
	if (aw->reauth)
		return PKT_OK;
	/* Nothing more from the client until the verdict. */
	c->paused = true;
	return PKT_PAUSE;
}

void worker_auth_tick(struct worker *w)
{
	struct worker_auth *wa = wa_of(w);

	for (uint32_t t = 0; wa != NULL && wa->held > 0 && t < wa->cap; t++) {
		struct auth_wait *aw = wa->waits[t];
		struct conn *c;

		if (aw == NULL || !aw->reauth || aw->cancel || aw->deadline_ms > w->now_ms ||
		    (c = conn_lookup(w, aw->conn)) == NULL)
			continue;
		reauth_fail(w, c, "re-authentication not finished within connect_timeout");
	}
}

/*
 * c is closing while it waits for its verdict. A request not sent yet
 * goes; one the auth role has is cancelled (IPC_AUTH_CANCEL), so that it
 * stops holding the role's share of this worker; its verdict, should it
 * come first, finds nothing.
 */
void worker_auth_forget(struct worker *w, const struct conn *c)
{
	struct worker_auth *wa = wa_of(w);

	for (uint32_t t = 0; wa != NULL && t < wa->cap; t++) {
		struct auth_wait *aw = wa->waits[t];

		if (aw == NULL || aw->conn != c->id || aw->cancel)
			continue;
		if (!aw->sent) {
			wait_free(wa, t);
			return;
		}
		wait_drop_request(aw);
		aw->cancel = true;
		aw->sent = false;
		wa->unsent++;
		worker_auth_flush(w);
		return;
	}
}

/* --- set-up and reload ------------------------------------------------------ */

static int channel_register(struct worker *w, struct worker_auth *wa)
{
	if (wa->registered || !config_auth_role(w->cfg))
		return 0;
	if (epoll_watch(w->epfd, wa->fd, EPOLLIN, &w->env->auth_chan_worker[w->index]) < 0)
		return -1;
	wa->registered = true;
	return 0;
}

int worker_auth_setup(struct worker *w)
{
	struct worker_auth *wa = calloc(1, sizeof(*wa));

	w->acl_in_force = config_acl_in_force(w->cfg);
	if (wa == NULL)
		return -1;
	w->auth = wa;
	wa->fd = w->env->auth_chan_worker[w->index];
	if ((wa->views = acl_views_new()) == NULL)
		return -1;
	ipc_dispatcher_init(&wa->in, from_auth, w->index, "the auth role");
	return channel_register(w, wa);
}

/*
 * A reloaded configuration. The auth role started: its channel is read
 * from now on. It stopped: what waited for it is decided here, by the
 * loopback rule.
 */
void worker_auth_config_changed(struct worker *w)
{
	struct worker_auth *wa = wa_of(w);

	w->acl_in_force = config_acl_in_force(w->cfg);
	if (config_auth_role(w->cfg)) {
		if (channel_register(w, wa) < 0)
			log_error("cannot read the auth channel: %s", strerror(errno));
		return;
	}
	for (uint32_t t = 0; t < wa->cap; t++) {
		struct auth_wait *aw = wa->waits[t];
		struct conn *c = aw ? conn_lookup(w, aw->conn) : NULL;
		struct ipc_auth_fields f;

		if (aw != NULL && aw->cancel) {
			wait_free(wa, t);            /* no role left to tell */
			continue;
		}
		/* No role left to end a SCRAM exchange: it fails. */
		if (aw != NULL && aw->scram) {
			wait_free(wa, t);
			if (c != NULL)
				exchange_fail(w, c, "the auth role stopped during its SCRAM exchange");
			continue;
		}
		if (c == NULL || !ipc_auth_request_decode(aw->req, aw->req_len, &f))
			continue;
		f.code = worker_auth_loopback_ok(w, c, f.user, f.user_len) ?
			 MQTT_CONNACK_ACCEPTED : MQTT_CONNACK_NOT_AUTHORIZED;
		on_verdict_fields(w, &f);
	}
}

void worker_auth_free(struct worker *w)
{
	struct worker_auth *wa = wa_of(w);

	if (wa == NULL)
		return;
	for (uint32_t t = 0; t < wa->cap; t++)
		if (wa->waits[t] != NULL)
			wait_free(wa, t);
	free(wa->waits);
	acl_views_free(wa->views);
	free(wa);
	w->auth = NULL;
}
