/*
 * worker_mqtt.c - a worker's MQTT side: the packets its clients send.
 *
 * Decodes the whole packets a connection's input holds, within the packet
 * limits (a client before its CONNECT is held to less), and handles each:
 * CONNECT and SUBSCRIBE/UNSUBSCRIBE go to the router as records; PUBLISH
 * is acknowledged here and delivered here or sent to the router, as its
 * topic's route says (routes.h); PUBACK, PUBREC, PUBREL and PUBCOMP move
 * the connection's QoS state (qos.h); PINGREQ is answered; DISCONNECT, a
 * protocol error or a decode failure closes the connection.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "topic.h"
#include "worker_int.h"
#include "worker_transport.h"

/*
 * Deliver the message here or send it to the router, as its topic's route
 * says (routes.h). Under an ACL a local route is taken only for what the
 * publisher's view lets it write: without a view the router decides, and
 * what the view refuses goes nowhere (it was acknowledged already, as the
 * protocol wants; the router would refuse it too).
 */
static void route_publish(struct worker *w, struct conn *c, const struct mqtt_publish *pub)
{
	uint64_t gen = atomic_load_explicit(&w->env->shm.router->route_gen, memory_order_acquire);
	bool to_router = pub->retain;
	const struct route *rt;
	uint64_t ask;

	if (w->acl_in_force) {
		if (c->acl &&
		    !acl_client_may(c->acl, (const char *)pub->topic.p, pub->topic.len, ACL_WRITE)) {
			log_debug("PUBLISH from '%s' (%s) to '%.*s' refused by the ACL", conn_client_id(c),
				  c->remote, (int)pub->topic.len, (const char *)pub->topic.p);
			return;
		}
		to_router |= !c->acl;
	}
	switch (routes_decide(&w->routes, pub->topic.p, pub->topic.len, pub->qos, to_router,
			      gen, &rt, &ask)) {
	case ROUTE_DELIVER_LOCAL:
		deliver_local(w, rt, pub);
		break;
	case ROUTE_SEND:
		push_publish(w, c->id, pub, 0);
		break;
	case ROUTE_SEND_ASK:
		push_publish(w, c->id, pub, ask);
		break;
	}
}

static enum pkt_result handle_publish(struct worker *w, struct conn *c, const struct mqtt_publish *pub)
{
	if (!topic_name_valid((const char *)pub->topic.p, pub->topic.len,
			      (size_t)w->cfg->max_topic_levels, (size_t)w->cfg->max_topic_length)) {
		conn_close(w, c, true, "invalid topic name in PUBLISH");
		return PKT_CLOSED;
	}
	w->msgs_in++;
	switch (pub->qos) {
	case 0:
		route_publish(w, c, pub);
		break;
	case 1:
		/*
		 * PUBACK queued first: connections are flushed last marked first,
		 * so a delivery made here goes out before it, and its subscriber
		 * is not kept waiting behind a write to the publisher.
		 */
		send_ack(w, c, MQTT_PUBACK, pub->packet_id);
		route_publish(w, c, pub);
		break;
	case 2:
		switch (qos_in_receive(&c->qos, w->cfg, pub->packet_id)) {
		case QOS_IN_NEW:
			report_qos2_in(w, c, pub->packet_id, true);
			route_publish(w, c, pub);
			break;
		case QOS_IN_HELD:        /* exactly once: not routed again */
			break;
		case QOS_IN_FULL:
			conn_close(w, c, true, "too many QoS 2 messages awaiting PUBREL "
				   "(max_inflight)");
			return PKT_CLOSED;
		case QOS_IN_NOMEM:
			conn_close(w, c, true, "out of memory");
			return PKT_CLOSED;
		}
		send_ack(w, c, MQTT_PUBREC, pub->packet_id);
		break;
	}
	return PKT_OK;
}

static bool filter_valid(const struct worker *w, struct mqtt_str f)
{
	return topic_filter_valid((const char *)f.p, f.len, (size_t)w->cfg->max_topic_levels,
				  (size_t)w->cfg->max_topic_length);
}

static void handle_subscribe(struct worker *w, struct conn *c, const struct mqtt_packet *pkt)
{
	struct rec_subscribe x = { .conn = c->id, .packet_id = pkt->u.list.packet_id };
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t qos;
	size_t count_off = rec_subscribe_begin(&w->rw, &x);
	uint16_t n = 0;

	mqtt_list_iter_init(&it, pkt);
	while (mqtt_list_next(&it, &f, &qos)) {
		struct rec_subscription s = {
			.filter = { f.p, f.len },
			.qos = filter_valid(w, f) ? qos : MQTT_SUBACK_FAILURE,
		};

		rec_subscribe_add(&w->rw, &s);
		n++;
	}
	rec_subscribe_end(&w->rw, count_off, n);
	push_recw(w, REC_SUBSCRIBE);
}

static void handle_unsubscribe(struct worker *w, struct conn *c, const struct mqtt_packet *pkt)
{
	struct rec_unsubscribe x = { .conn = c->id, .packet_id = pkt->u.list.packet_id };
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t qos;
	size_t count_off = rec_unsubscribe_begin(&w->rw, &x);
	uint16_t n = 0;

	mqtt_list_iter_init(&it, pkt);
	while (mqtt_list_next(&it, &f, &qos)) {
		rec_unsubscribe_add(&w->rw, (struct rec_str){ f.p, f.len });
		n++;
	}
	rec_unsubscribe_end(&w->rw, count_off, n);
	push_recw(w, REC_UNSUBSCRIBE);
}

/* *cp: the connection, which moves (conn_add_client_id). */
/*
 * tls.use_identity_as_username: the verified client certificate's
 * identity replaces the CONNECT's user name and password (*k, a copy of
 * the CONNECT, points into ident). False: there is none (refused).
 */
static bool take_identity(struct conn *c, struct mqtt_connect *k, char *ident, size_t cap)
{
	int n = xport_identity(c, ident, cap);

	if (n < 0)
		return false;
	k->username_flag = true;
	k->username.p = (const uint8_t *)ident;
	k->username.len = (uint16_t)n;
	k->password_flag = false;
	k->password.len = 0;
	return true;
}

static enum pkt_result handle_connect(struct worker *w, struct conn **cp,
				      const struct mqtt_connect *connect)
{
	const struct iotd_config *cfg = w->cfg;
	struct conn *c = *cp;
	struct mqtt_connect k = *connect;
	const struct mqtt_connect *ck = &k;
	bool from_cert = false;
	struct rec_connect rc;
	char gen[40], ident[XPORT_IDENTITY_MAX + 1];
	const char *id;
	size_t len;

	if (ck->client_id.len == 0 && !ck->clean_session) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "empty client id with clean session 0");
		return PKT_CLOSED;
	}
	if (ck->client_id.len > cfg->max_client_id_length) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "client id longer than max_client_id_length");
		return PKT_CLOSED;
	}
	if (cfg->max_keepalive > 0 && (ck->keepalive == 0 || ck->keepalive > cfg->max_keepalive)) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "keep-alive above max_keepalive");
		return PKT_CLOSED;
	}
	if (ck->will_flag && !topic_name_valid((const char *)ck->will_topic.p, ck->will_topic.len,
					       (size_t)cfg->max_topic_levels,
					       (size_t)cfg->max_topic_length)) {
		conn_close(w, c, false, "invalid will topic");
		return PKT_CLOSED;
	}
	if (ck->client_id.len == 0) {
		snprintf(gen, sizeof(gen), "iotd-%016llx", (unsigned long long)c->id);
		id = gen;
		len = strlen(gen);
	} else {
		id = (const char *)ck->client_id.p;
		len = strnlen(id, ck->client_id.len);
	}
	c = conn_add_client_id(w, c, id, len);
	if (c == NULL) {
		conn_close(w, *cp, false, strerror(errno));
		return PKT_CLOSED;
	}
	*cp = c;
	if (cfg->tls_use_identity_as_username && c->xp != NULL &&
	    listen_transport_tls(c->xp->transport)) {
		if (!take_identity(c, &k, ident, sizeof(ident))) {
			conn_refuse(w, c, MQTT_CONNACK_NOT_AUTHORIZED, "no identity in the client "
				    "certificate (tls.use_identity_as_username)");
			return PKT_CLOSED;
		}
		from_cert = true;
	}
	if (!config_auth_role(cfg) &&
	    !worker_auth_loopback_ok(w, c, (const char *)ck->username.p,
				     ck->username_flag ? ck->username.len : 0)) {
		conn_refuse(w, c, MQTT_CONNACK_NOT_AUTHORIZED, "not a loopback client");
		return PKT_CLOSED;
	}
	/*
	 * Nothing else from this client until the router has placed its
	 * session. EPOLLIN stays in the registration the move just updated,
	 * and goes only if more input comes meanwhile (see worker_main): most
	 * clients wait for their CONNACK, and taking it out and back would
	 * cost an epoll_ctl call more per connection.
	 */
	c->paused = true;
	c->clean = ck->clean_session;
	c->keepalive = ck->keepalive ? ck->keepalive : (uint16_t)cfg->keep_alive_timeout_secs;
	rc = (struct rec_connect){
		.conn = c->id,
		.clean = ck->clean_session,
		.keepalive = ck->keepalive,
		.user = { ck->username.p, ck->username_flag ? ck->username.len : 0 },
		.will_flag = ck->will_flag,
		.will_qos = ck->will_qos,
		.will_retain = ck->will_retain,
		.will_topic = { ck->will_topic.p, ck->will_flag ? ck->will_topic.len : 0 },
		.will_payload = { ck->will_payload.p, ck->will_flag ? ck->will_payload.len : 0 },
	};
	/* With the auth role, the record waits for its verdict (worker_auth.c). */
	if (config_auth_role(cfg))
		return worker_auth_hold(w, c, ck, from_cert, &rc) ? PKT_PAUSE : PKT_CLOSED;
	connect_forward(w, c, &rc);
	return PKT_PAUSE;
}

/*
 * The CONNECT to the router, which places the session and answers
 * CONNACK; rc as handle_connect made it (the client id and the remote
 * address are the connection's).
 */
void connect_forward(struct worker *w, struct conn *c, const struct rec_connect *rc)
{
	struct rec_connect x = *rc;

	x.client_id = (struct rec_str){ (const uint8_t *)conn_client_id(c),
					(uint16_t)strlen(conn_client_id(c)) };
	x.remote = (struct rec_str){ (const uint8_t *)c->remote, (uint16_t)strlen(c->remote) };
	rec_connect_encode(&w->rw, &x);
	push_recw(w, REC_CONNECT);
	c->state = CS_CONNECTING;
}

static enum pkt_result handle_ack(struct worker *w, struct conn *c, const struct mqtt_packet *pkt)
{
	uint16_t pid = pkt->u.packet_id;
	uint64_t copy;

	switch (pkt->type) {
	case MQTT_PUBACK:
	case MQTT_PUBCOMP:
		if (pkt->type == MQTT_PUBACK ? qos_puback(c->qos, pid, &copy) :
					       qos_pubcomp(c->qos, pid, &copy)) {
			report_state(w, c, copy, pid, MSG_DONE);
			pending_pump(w, c);
		}
		break;
	case MQTT_PUBREC:
		switch (qos_pubrec(c->qos, pid, &copy)) {
		case QOS_PUBREC_RELEASED:
			report_state(w, c, copy, pid, MSG_PUBREL);
			send_ack(w, c, MQTT_PUBREL, pid);
			break;
		case QOS_PUBREC_AGAIN:
			send_ack(w, c, MQTT_PUBREL, pid);
			break;
		case QOS_PUBREC_UNKNOWN:
			break;
		}
		break;
	case MQTT_PUBREL:
		if (qos_in_release(&c->qos, pid))
			report_qos2_in(w, c, pid, false);
		send_ack(w, c, MQTT_PUBCOMP, pid);
		break;
	default:
		break;
	}
	return PKT_OK;
}

/* *cp: the connection, which a CONNECT moves. */
static enum pkt_result handle_packet(struct worker *w, struct conn **cp,
				     const struct mqtt_packet *pkt)
{
	struct conn *c = *cp;

	if (c->state == CS_NEW) {
		/*
		 * Refused from its first byte already (process_bytes); kept so
		 * that handle_connect never reads another packet's fields.
		 */
		if (pkt->type != MQTT_CONNECT) {
			conn_close(w, c, false, "first packet is not CONNECT");
			return PKT_CLOSED;
		}
		return handle_connect(w, cp, &pkt->u.connect);
	}
	switch (pkt->type) {
	case MQTT_PUBLISH:
		return handle_publish(w, c, &pkt->u.publish);
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		return handle_ack(w, c, pkt);
	case MQTT_SUBSCRIBE:
		handle_subscribe(w, c, pkt);
		return PKT_OK;
	case MQTT_UNSUBSCRIBE:
		handle_unsubscribe(w, c, pkt);
		return PKT_OK;
	case MQTT_PINGREQ: {
		uint8_t *p = out_reserve(w, c, 2);

		if (p != NULL)
			mqtt_encode_empty(p, MQTT_PINGRESP);
		return PKT_OK;
	}
	case MQTT_DISCONNECT:
		conn_close(w, c, false, "client sent DISCONNECT");
		return PKT_CLOSED;
	case MQTT_CONNECT:
		conn_close(w, c, true, "second CONNECT");
		return PKT_CLOSED;
	default:
		conn_close(w, c, true, "server-only packet from client");
		return PKT_CLOSED;
	}
}

/*
 * The largest packet c may send next, fixed header included. Before its
 * CONNECT, a client that has not yet said who it is may make the worker
 * hold at most max_connect_size bytes of input (max_packet_size when
 * that is lower): connect_timeout bounds how long, max_connections how
 * many such clients there are.
 */
static size_t packet_limit(const struct worker *w, const struct conn *c)
{
	if (c->state == CS_NEW)
		return (size_t)MIN(w->cfg->max_connect_size, w->cfg->max_packet_size);
	return (size_t)w->cfg->max_packet_size;
}

static void decode_failure(struct worker *w, struct conn *c, int rc)
{
	char why[96];

	if (rc == MQTT_ERR_PROTOCOL_LEVEL && c->state == CS_NEW) {
		send_connack(w, c, false, MQTT_CONNACK_BAD_PROTOCOL);
		conn_close(w, c, false, "unsupported protocol level");
		return;
	}
	if (rc == MQTT_ERR_TOO_LARGE && c->state == CS_NEW) {
		snprintf(why, sizeof(why), "CONNECT declared larger than %zu bytes (%s)",
			 packet_limit(w, c), w->cfg->max_connect_size <= w->cfg->max_packet_size ?
			 "max_connect_size" : "max_packet_size");
		conn_close(w, c, false, why);
		return;
	}
	snprintf(why, sizeof(why), "protocol error: %s", mqtt_result_str(rc));
	conn_close(w, c, c->state == CS_ACTIVE, why);
}

/*
 * Decode and handle every whole packet in [p, p+len). Returns the bytes
 * consumed, or -1 when the connection was closed. *cp is the connection,
 * updated when a CONNECT moves it.
 */
ssize_t process_bytes(struct worker *w, struct conn **cp, const uint8_t *p, size_t len)
{
	struct conn *c = *cp;
	size_t off = 0;

	while (off < len && !c->paused) {
		struct mqtt_packet pkt;
		uint8_t first;
		uint32_t remaining;
		size_t hdr;
		int rc;

		/*
		 * A first packet that is not CONNECT is refused from its first
		 * byte: none of its body is waited for or held.
		 */
		if (c->state == CS_NEW && p[off] >> 4 != MQTT_CONNECT) {
			conn_close(w, c, false, "first packet is not CONNECT");
			return -1;
		}
		rc = mqtt_fixed_header(p + off, len - off, packet_limit(w, c), &first, &remaining,
				       &hdr);
		if (rc == MQTT_INCOMPLETE)
			break;
		if (rc == MQTT_OK && hdr + remaining > len - off)
			break;
		if (rc == MQTT_OK)
			rc = mqtt_decode(first, p + off + hdr, remaining, &pkt);
		if (rc != MQTT_OK) {
			decode_failure(w, c, rc);
			return -1;
		}
		off += hdr + remaining;
		/*
		 * Deadlines count whole packets, not bytes [MQTT-3.1.2-24]: a
		 * client trickling a packet byte by byte does not keep itself alive.
		 */
		c->last_rx_ms = w->now_ms;
		switch (handle_packet(w, cp, &pkt)) {
		case PKT_CLOSED:
			return -1;
		case PKT_PAUSE:
		case PKT_OK:
			break;
		}
		c = *cp;
	}
	return (ssize_t)off;
}
