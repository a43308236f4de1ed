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
 *
 * A CONNECT of protocol level 5 makes the connection an MQTT 5 one: its
 * packets are decoded by the MQTT 5 codec (mqtt5.h), its limits and topic
 * aliases kept in its struct conn_v5, its CONNACK carries what iotd
 * supports, and what closes it is said in a DISCONNECT's reason code.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "scram.h"
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
static void route_publish(struct worker *w, struct conn *c, const struct mqtt_publish *pub,
			  struct msg_v5 x5)
{
	uint64_t gen = atomic_load_explicit(&w->env->shm.router->route_gen, memory_order_acquire);
	/* A local route delivers no properties nor expiry: a message with them goes to the router. */
	bool to_router = pub->retain || x5.props.len > 0 || x5.expires_at > 0;
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
		push_publish(w, c->id, pub, 0, x5);
		break;
	case ROUTE_SEND_ASK:
		push_publish(w, c->id, pub, ask, x5);
		break;
	}
}

static bool topic_valid(const struct worker *w, struct mqtt_str t)
{
	return topic_name_valid((const char *)t.p, t.len, (size_t)w->cfg->max_topic_levels,
				(size_t)w->cfg->max_topic_length);
}

/*
 * A client's topic alias [MQTT-3.3.2.3.4]: a PUBLISH with a topic sets
 * it, one without takes the topic it was set to. The topics the
 * connection's aliases hold stay within server.topic_alias_max_bytes.
 * Returns 0, or the reason code of the DISCONNECT that refuses it: 0x94
 * for an alias out of range or never set (the client broke the
 * protocol), 0x97 for one past the bytes (the client did not: the bound
 * is iotd's own, told to no client, so a limit imposed by the server),
 * 0x80 out of memory.
 */
static uint8_t topic_alias_apply(const struct worker *w, struct conn_v5 *v, uint16_t alias,
				 struct mqtt_str *topic)
{
	struct alias_table_in *t = v->held != NULL ? v->held->alias : NULL;
	struct topic_alias *a;
	size_t held;

	if (alias == 0 || alias > v->n_alias)
		return MQTT5_RC_TOPIC_ALIAS_INVALID;
	if (t == NULL) {
		if (topic->len == 0)
			return MQTT5_RC_TOPIC_ALIAS_INVALID;
		if (conn_v5_hold(v) == NULL)
			return MQTT5_RC_UNSPECIFIED_ERROR;
		t = calloc(1, sizeof(*t) + (size_t)v->n_alias * sizeof(t->a[0]));
		if (t == NULL)
			return MQTT5_RC_UNSPECIFIED_ERROR;
		v->held->alias = t;
	}
	a = &t->a[alias - 1];
	if (topic->len == 0) {
		if (a->topic == NULL)
			return MQTT5_RC_TOPIC_ALIAS_INVALID;
		*topic = (struct mqtt_str){ a->topic, a->len };
		return MQTT5_RC_SUCCESS;
	}
	held = t->bytes - (a->topic != NULL ? a->len : 0);
	if (held + topic->len > (size_t)w->cfg->topic_alias_max_bytes)
		return MQTT5_RC_QUOTA_EXCEEDED;
	if (a->len != topic->len || a->topic == NULL) {
		uint8_t *copy = realloc(a->topic, topic->len);

		if (copy == NULL)
			return MQTT5_RC_UNSPECIFIED_ERROR;
		a->topic = copy;
		a->len = topic->len;
	}
	memcpy(a->topic, topic->p, topic->len);
	t->bytes = (uint32_t)(held + topic->len);
	return MQTT5_RC_SUCCESS;
}

static const char *topic_alias_refusal(uint8_t reason)
{
	switch (reason) {
	case MQTT5_RC_QUOTA_EXCEEDED:
		return "topic aliases past their bytes (server.topic_alias_max_bytes)";
	case MQTT5_RC_TOPIC_ALIAS_INVALID:
		return "topic alias out of range or unknown (server.topic_alias_maximum)";
	default:
		return "out of memory for a topic alias";
	}
}

/*
 * What MQTT 5 adds to a PUBLISH from the client: its topic alias
 * resolved into pub->topic, the properties a client may not send or send
 * so refused. PKT_CLOSED: c was closed. *reason: 0, or the reason code
 * of the acknowledgement that refuses the message (not routed).
 */
static enum pkt_result publish5_check(struct worker *w, struct conn *c, struct mqtt_publish *pub,
				      const struct mqtt5_props *props, uint8_t *reason)
{
	uint8_t alias_rc;

	*reason = MQTT5_RC_SUCCESS;
	if (mqtt5_props_has(props, MQTT5_PROP_SUB_ID)) {
		conn_disconnect(w, c, MQTT5_RC_PROTOCOL_ERROR, true,
				"subscription identifier in a PUBLISH from the client");
		return PKT_CLOSED;
	}
	if (pub->topic.len > 0 && !topic_valid(w, pub->topic)) {
		conn_disconnect(w, c, MQTT5_RC_TOPIC_NAME_INVALID, true,
				"invalid topic name in PUBLISH");
		return PKT_CLOSED;
	}
	if (mqtt5_props_has(props, MQTT5_PROP_TOPIC_ALIAS) &&
	    (alias_rc = topic_alias_apply(w, CONN_V5(w, c), props->topic_alias,
					  &pub->topic)) != MQTT5_RC_SUCCESS) {
		conn_disconnect(w, c, alias_rc, true, topic_alias_refusal(alias_rc));
		return PKT_CLOSED;
	}
	if (mqtt5_props_has(props, MQTT5_PROP_RESPONSE_TOPIC) &&
	    !topic_valid(w, props->response_topic)) {
		conn_disconnect(w, c, MQTT5_RC_PROTOCOL_ERROR, true,
				"invalid response topic in PUBLISH");
		return PKT_CLOSED;
	}
	if (props->payload_format == 1 && !mqtt_utf8_valid(pub->payload, pub->payload_len)) {
		if (pub->qos == 0) {
			conn_disconnect(w, c, MQTT5_RC_PAYLOAD_FORMAT_INVALID, true,
					"PUBLISH payload said UTF-8 is not");
			return PKT_CLOSED;
		}
		*reason = MQTT5_RC_PAYLOAD_FORMAT_INVALID;
	}
	return PKT_OK;
}

/*
 * The properties of an MQTT 5 PUBLISH that go to its receivers (rec.h,
 * REC_PUB_PROPS): its block without what the broker rewrites, with a
 * length field, in w->pub_props; empty when nothing is left. False: out
 * of memory.
 */
static bool publish_props(struct worker *w, const struct mqtt5_props *in, uint64_t skip,
			  struct rec_bytes *out)
{
	struct mqtt5_prop_iter it;
	struct mqtt5_prop prop;
	size_t kept = 0;
	uint8_t *dst;

	*out = (struct rec_bytes){ 0 };
	if ((in->present & ~skip) == 0)
		return true;
	if ((dst = props_begin(&w->pub_props, in->raw_len)) == NULL)
		return false;
	mqtt5_prop_iter_init(&it, in);
	for (const uint8_t *start = it.p; mqtt5_prop_next(&it, &prop); start = it.p) {
		if (MQTT5_BIT(prop.id) & skip)
			continue;
		memcpy(dst + kept, start, (size_t)(it.p - start));
		kept += (size_t)(it.p - start);
	}
	*out = props_end(&w->pub_props, kept);
	return true;
}

/* A QoS 1/2 message refused with reason: acknowledged with it, not routed, not held. */
static enum pkt_result publish_refuse(struct worker *w, struct conn *c,
				      const struct mqtt_publish *pub, uint8_t reason)
{
	log_client(LOG_LVL_INFO, conn_client_id(c), c->remote, "PUBLISH to '%.*s' refused: %s",
		   (int)pub->topic.len, (const char *)pub->topic.p,
		   mqtt5_reason_name(MQTT_PUBACK, reason));
	send_ack5(w, c, pub->qos == 1 ? MQTT_PUBACK : MQTT_PUBREC, pub->packet_id, reason);
	return PKT_OK;
}

/* p5: the packet as the MQTT 5 codec decoded it; NULL on an MQTT 3.1.1 connection. */
static enum pkt_result handle_publish(struct worker *w, struct conn *c,
				      const struct mqtt_publish *in, const struct mqtt5_packet *p5)
{
	struct mqtt_publish v5pub;
	const struct mqtt_publish *pub = in;
	struct msg_v5 x5 = { 0 };
	uint8_t reason;

	if (p5 != NULL) {
		v5pub = *in;
		pub = &v5pub;
		if (publish5_check(w, c, &v5pub, &p5->props, &reason) == PKT_CLOSED)
			return PKT_CLOSED;
		/*
		 * What the client's view of the ACL refuses is acknowledged with
		 * 0x87; without a view the router decides, after the PUBACK.
		 */
		if (reason == MQTT5_RC_SUCCESS && pub->qos > 0 && w->acl_in_force && c->acl &&
		    !acl_client_may(c->acl, (const char *)pub->topic.p, pub->topic.len, ACL_WRITE))
			reason = MQTT5_RC_NOT_AUTHORIZED;
		if (reason != MQTT5_RC_SUCCESS)
			return publish_refuse(w, c, pub, reason);
		if (!publish_props(w, &p5->props, MQTT5_PUBLISH_REWRITTEN, &x5.props)) {
			conn_disconnect(w, c, MQTT5_RC_UNSPECIFIED_ERROR, true, "out of memory");
			return PKT_CLOSED;
		}
		if (mqtt5_props_has(&p5->props, MQTT5_PROP_MESSAGE_EXPIRY))
			x5.expires_at = wall_clock_ms() + (uint64_t)p5->props.message_expiry * 1000;
	} else if (!topic_valid(w, pub->topic)) {
		conn_close(w, c, true, "invalid topic name in PUBLISH");
		return PKT_CLOSED;
	}
	w->msgs_in++;
	switch (pub->qos) {
	case 0:
		route_publish(w, c, pub, x5);
		break;
	case 1:
		/*
		 * PUBACK queued first: connections are flushed last marked first,
		 * so a delivery made here goes out before it, and its subscriber
		 * is not kept waiting behind a write to the publisher.
		 */
		send_ack(w, c, MQTT_PUBACK, pub->packet_id);
		route_publish(w, c, pub, x5);
		break;
	case 2:
		switch (qos_in_receive(&c->qos, w->cfg, pub->packet_id)) {
		case QOS_IN_NEW:
			report_qos2_in(w, c, pub->packet_id, true);
			route_publish(w, c, pub, x5);
			break;
		case QOS_IN_HELD:        /* exactly once: not routed again */
			break;
		case QOS_IN_FULL:
			/* max_inflight is the receive maximum an MQTT 5 client was given. */
			conn_disconnect(w, c, MQTT5_RC_RECEIVE_MAXIMUM_EXCEEDED, true,
					"too many QoS 2 messages awaiting PUBREL (max_inflight)");
			return PKT_CLOSED;
		case QOS_IN_NOMEM:
			conn_disconnect(w, c, MQTT5_RC_UNSPECIFIED_ERROR, true, "out of memory");
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

/*
 * A subscription's QoS (and MQTT 5 options) as the router takes it, or the
 * SUBACK code that refuses it. The router takes the whole options byte
 * (QoS, no local, retain as published, retain handling).
 */
static uint8_t subscription_qos(const struct worker *w, struct mqtt_str f, uint8_t options,
				bool v5)
{
	if (!v5)
		return filter_valid(w, f) ? options : MQTT_SUBACK_FAILURE;
	return filter_valid(w, f) ? options : MQTT5_RC_TOPIC_FILTER_INVALID;
}

/* No local on a shared subscription is a protocol error [MQTT-3.8.3-4]. */
static bool shared_no_local(struct mqtt_str f, uint8_t options)
{
	return (options & MQTT5_SUB_NO_LOCAL) && f.len >= TOPIC_SHARE_PREFIX_LEN &&
	       memcmp(f.p, TOPIC_SHARE_PREFIX, TOPIC_SHARE_PREFIX_LEN) == 0;
}

/* p5 as for handle_publish. */
static enum pkt_result handle_subscribe(struct worker *w, struct conn *c,
					const struct mqtt_packet *pkt, const struct mqtt5_packet *p5)
{
	struct rec_subscribe x = { .conn = c->id, .packet_id = pkt->u.list.packet_id };
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t qos;
	size_t count_off;
	uint16_t n = 0;

	/* The codec refused a SUBSCRIBE with identifier 0 or two of them. */
	if (p5 != NULL && mqtt5_props_has(&p5->props, MQTT5_PROP_SUB_ID))
		x.sub_id = p5->props.sub_id;
	count_off = rec_subscribe_begin(&w->rw, &x);
	if (p5 != NULL)
		mqtt5_list_iter_init(&it, p5);
	else
		mqtt_list_iter_init(&it, pkt);
	while (mqtt_list_next(&it, &f, &qos)) {
		if (p5 != NULL && shared_no_local(f, qos)) {
			conn_disconnect(w, c, MQTT5_RC_PROTOCOL_ERROR, true,
					"no local on a shared subscription");
			return PKT_CLOSED;
		}
		struct rec_subscription s = {
			.filter = { f.p, f.len },
			.qos = subscription_qos(w, f, qos, p5 != NULL),
		};

		rec_subscribe_add(&w->rw, &s);
		n++;
	}
	rec_subscribe_end(&w->rw, count_off, n);
	push_recw(w, REC_SUBSCRIBE);
	return PKT_OK;
}

static void handle_unsubscribe(struct worker *w, struct conn *c, const struct mqtt_packet *pkt,
			       const struct mqtt5_packet *p5)
{
	struct rec_unsubscribe x = { .conn = c->id, .packet_id = pkt->u.list.packet_id };
	struct mqtt_list_iter it;
	struct mqtt_str f;
	uint8_t qos;
	size_t count_off = rec_unsubscribe_begin(&w->rw, &x);
	uint16_t n = 0;

	if (p5 != NULL)
		mqtt5_list_iter_init(&it, p5);
	else
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

/*
 * An MQTT 5 CONNECT makes c an MQTT 5 connection: its state, from the
 * CONNECT's properties. False: out of memory.
 */
static bool conn_v5_new(struct worker *w, struct conn *c, const struct mqtt5_props *props)
{
	struct conn_v5 *v = calloc(1, sizeof(*v));

	if (v == NULL)
		return false;
	v->n_alias = (uint16_t)w->cfg->topic_alias_maximum;
	v->n_alias_out = (uint16_t)MIN((long)props->topic_alias_max, w->cfg->topic_alias_maximum_out);
	v->receive_max = props->receive_max;
	v->session_expiry = props->session_expiry;   /* asked; what is granted replaces it */
	if (mqtt5_props_has(props, MQTT5_PROP_MAX_PACKET_SIZE))
		v->max_packet = props->max_packet_size;
	c->v5_state = v;
	return true;
}

/*
 * The session expiry interval granted: 3.1.1's clean session 1 is 0, 0 is
 * never; MQTT 5's asked, up to server.max_session_expiry_interval.
 */
static uint32_t granted_expiry(const struct iotd_config *cfg, const struct conn_v5 *v,
			       bool clean)
{
	uint32_t cap = (uint32_t)cfg->max_session_expiry_interval;

	if (v == NULL)
		return clean ? 0 : REC_EXPIRY_NEVER;
	return cap && v->session_expiry > cap ? cap : v->session_expiry;
}

/*
 * The will's MQTT 5 part into rc: its delay, its message expiry, and the
 * properties that go with it when published. false: out of memory.
 */
static bool connect_will5(struct worker *w, const struct mqtt5_packet *p5,
			  struct rec_connect *rc)
{
	const struct mqtt5_props *wp = &p5->will_props;

	rc->will_delay = wp->will_delay;
	rc->will_expiry = mqtt5_props_has(wp, MQTT5_PROP_MESSAGE_EXPIRY) ? wp->message_expiry : 0;
	return publish_props(w, wp, MQTT5_PUBLISH_REWRITTEN | MQTT5_BIT(MQTT5_PROP_WILL_DELAY),
			     &rc->will_props);
}

/*
 * The keep-alive iotd holds c to: the client's, or server.max_keepalive
 * when it asks for none or more, or keep_alive_timeout_secs when it asks
 * for none. An MQTT 5 client is told in CONNACK (server keep alive); a
 * 3.1.1 one over max_keepalive is refused (false).
 */
static bool connect_keepalive(struct worker *w, struct conn *c, uint16_t asked)
{
	const struct iotd_config *cfg = w->cfg;
	struct conn_v5 *v = CONN_V5(w, c);
	uint16_t ka = asked;

	if (cfg->max_keepalive > 0 && (asked == 0 || asked > cfg->max_keepalive)) {
		if (v == NULL)
			return false;
		ka = (uint16_t)cfg->max_keepalive;
	}
	if (ka == 0 && v != NULL)
		ka = (uint16_t)cfg->keep_alive_timeout_secs;
	c->keepalive = ka ? ka : (uint16_t)cfg->keep_alive_timeout_secs;
	/* With v, ka is c->keepalive, and never 0 when it is not what was asked. */
	if (v != NULL && ka != asked)
		v->keep_alive_told = true;
	return true;
}

static enum pkt_result handle_connect(struct worker *w, struct conn **cp,
				      const struct mqtt5_packet *p5)
{
	const struct iotd_config *cfg = w->cfg;
	struct conn *c = *cp;
	struct mqtt_connect k = p5->u.connect;
	const struct mqtt_connect *ck = &k;
	const struct mqtt_str *scram = NULL;
	bool from_cert = false, v5 = ck->protocol_level == MQTT5_PROTOCOL_LEVEL;
	struct rec_connect rc;
	char gen[40], ident[XPORT_IDENTITY_MAX + 1];
	const char *id;
	size_t len;

	if (v5 && !conn_v5_new(w, c, &p5->props)) {
		conn_close(w, c, false, "out of memory");
		return PKT_CLOSED;
	}
	if (v5 && mqtt5_props_has(&p5->props, MQTT5_PROP_AUTH_METHOD)) {
		if (!worker_auth_method_ok(w, &p5->props.auth_method)) {
			send_connack5(w, c, false, MQTT5_RC_BAD_AUTHENTICATION_METHOD, NULL);
			conn_close(w, c, false, "authentication method in CONNECT not offered");
			return PKT_CLOSED;
		}
		scram = &p5->props.auth_data;
	}
	/* MQTT 5 lets the server assign an id whatever Clean Start says. */
	if (ck->client_id.len == 0 && !ck->clean_session && !v5) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "empty client id with clean session 0");
		return PKT_CLOSED;
	}
	if (ck->client_id.len > cfg->max_client_id_length) {
		send_connack(w, c, false, MQTT_CONNACK_ID_REJECTED);
		conn_close(w, c, false, "client id longer than max_client_id_length");
		return PKT_CLOSED;
	}
	if (!connect_keepalive(w, c, ck->keepalive)) {
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
		if (v5)
			CONN_V5(w, c)->assigned_id = true;
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
	if (cfg->tls_use_identity_as_username && scram == NULL && c->xp != NULL &&
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
		.session_expiry = granted_expiry(cfg, CONN_V5(w, c), ck->clean_session),
	};
	/* A session that ends with its connection is "clean" to the worker, as in 3.1.1. */
	c->clean = rc.session_expiry == 0;
	if (v5) {
		struct conn_v5 *v = CONN_V5(w, c);

		v->expiry_capped = v->session_expiry != rc.session_expiry;
		v->session_expiry = rc.session_expiry;
		if (ck->will_flag && !connect_will5(w, p5, &rc)) {
			conn_close(w, c, false, "out of memory");
			return PKT_CLOSED;
		}
	}
	/* With the auth role, the record waits for its verdict (worker_auth.c). */
	if (config_auth_role(cfg))
		return worker_auth_hold(w, c, ck, from_cert, &rc, scram) ? PKT_PAUSE : PKT_CLOSED;
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

/*
 * A QoS 1/2 exchange the client ended: the router forgets its copy, and
 * the window has room, refilled once the bytes read are all handled
 * (process_bytes): a client acknowledges in batches, and one pass over
 * the queue then fills the whole room.
 */
static void ack_done(struct worker *w, struct conn *c, uint16_t pid, uint64_t copy)
{
	report_state(w, c, copy, pid, MSG_DONE);
	w->window_freed = true;
}

/* p5 as for handle_publish. */
static enum pkt_result handle_ack(struct worker *w, struct conn *c, const struct mqtt_packet *pkt,
				  const struct mqtt5_packet *p5)
{
	uint16_t pid = pkt->u.packet_id;
	uint64_t copy;

	switch (pkt->type) {
	case MQTT_PUBACK:
	case MQTT_PUBCOMP:
		if (pkt->type == MQTT_PUBACK ? qos_puback(c->qos, pid, &copy) :
					       qos_pubcomp(c->qos, pid, &copy))
			ack_done(w, c, pid, copy);
		break;
	case MQTT_PUBREC:
		/* An MQTT 5 client refusing the message ends the exchange: no PUBREL. */
		if (p5 != NULL && p5->reason >= 0x80) {
			if (qos_pubrec_refused(c->qos, pid, &copy))
				ack_done(w, c, pid, copy);
			break;
		}
		switch (qos_pubrec(c->qos, pid, &copy)) {
		case QOS_PUBREC_RELEASED:
			report_state(w, c, copy, pid, MSG_PUBREL);
			send_ack(w, c, MQTT_PUBREL, pid);
			break;
		case QOS_PUBREC_AGAIN:
			send_ack(w, c, MQTT_PUBREL, pid);
			break;
		case QOS_PUBREC_UNKNOWN:
			/* An MQTT 5 client is told; a 3.1.1 one is not answered. */
			if (conn_is_v5(c))
				send_ack5(w, c, MQTT_PUBREL, pid,
					  MQTT5_RC_PACKET_IDENTIFIER_NOT_FOUND);
			break;
		}
		break;
	case MQTT_PUBREL:
		if (qos_in_release(&c->qos, pid)) {
			report_qos2_in(w, c, pid, false);
			send_ack(w, c, MQTT_PUBCOMP, pid);
		} else {
			send_ack5(w, c, MQTT_PUBCOMP, pid, conn_is_v5(c) ?
				  MQTT5_RC_PACKET_IDENTIFIER_NOT_FOUND : MQTT5_RC_SUCCESS);
		}
		break;
	default:
		break;
	}
	return PKT_OK;
}

/*
 * DISCONNECT from the client: an MQTT 5 one says whether the will goes
 * out (reason 0x04 or an error), and may change the session expiry, but
 * not from 0 [MQTT-3.14.2-2].
 */
static enum pkt_result handle_disconnect(struct worker *w, struct conn *c,
					 const struct mqtt5_packet *p5)
{
	struct conn_v5 *v;

	if (p5 == NULL) {
		conn_close(w, c, false, "client sent DISCONNECT");
		return PKT_CLOSED;
	}
	v = CONN_V5(w, c);
	if (v->session_expiry == 0 && p5->props.session_expiry != 0) {
		conn_disconnect(w, c, MQTT5_RC_PROTOCOL_ERROR, true,
				"DISCONNECT set a session expiry after CONNECT granted none");
		return PKT_CLOSED;
	}
	/* 0 ends a persistent session now; another interval is the session's from now on. */
	if (mqtt5_props_has(&p5->props, MQTT5_PROP_SESSION_EXPIRY)) {
		uint32_t cap = (uint32_t)w->cfg->max_session_expiry_interval;

		v->session_expiry = cap && p5->props.session_expiry > cap ? cap :
				    p5->props.session_expiry;
		if (v->session_expiry == 0 && !c->clean) {
			v->end_session = true;
			c->clean = true;     /* nothing to hand back to the router */
		}
	}
	conn_close(w, c, p5->reason != MQTT5_RC_NORMAL_DISCONNECTION,
		   p5->reason == MQTT5_RC_NORMAL_DISCONNECTION ? "client sent DISCONNECT" :
		   "client sent DISCONNECT (with will)");
	return PKT_CLOSED;
}

/*
 * A connection's CONNECT accepted by the router (sp: session present).
 * An MQTT 5 client hears what iotd supports and grants it.
 */
void connack_accepted(struct worker *w, struct conn *c, bool sp)
{
	const struct iotd_config *cfg = w->cfg;
	struct conn_v5 *v = CONN_V5(w, c);
	uint8_t buf[256];
	struct mqtt5_pbuf b;
	struct mqtt5_out out;
	const char *id = conn_client_id(c);
	struct conn_scram *scram;

	if (v == NULL) {
		send_connack(w, c, sp, MQTT_CONNACK_ACCEPTED);
		return;
	}
	mqtt5_pbuf_init(&b, buf, sizeof(buf));
	scram = conn_v5_scram(v);
	if (scram != NULL && scram->final != NULL) {
		mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_METHOD, (const uint8_t *)SCRAM_METHOD,
			       strlen(SCRAM_METHOD));
		mqtt5_pbuf_str(&b, MQTT5_PROP_AUTH_DATA, scram->final, scram->final_len);
		free(scram->final);          /* copied: said once */
		scram->final = NULL;
	}
	if (v->expiry_capped)
		mqtt5_pbuf_num(&b, MQTT5_PROP_SESSION_EXPIRY, v->session_expiry);
	mqtt5_pbuf_num(&b, MQTT5_PROP_RECEIVE_MAX, (uint32_t)cfg->max_inflight);
	mqtt5_pbuf_num(&b, MQTT5_PROP_MAX_PACKET_SIZE, (uint32_t)cfg->max_packet_size);
	if (v->n_alias > 0)
		mqtt5_pbuf_num(&b, MQTT5_PROP_TOPIC_ALIAS_MAX, v->n_alias);
	mqtt5_pbuf_num(&b, MQTT5_PROP_RETAIN_AVAILABLE, 1);
	mqtt5_pbuf_num(&b, MQTT5_PROP_WILDCARD_SUB_AVAILABLE, 1);
	/* Shared subscriptions and subscription identifiers are available: the properties' absence says so. */
	if (v->assigned_id)
		mqtt5_pbuf_str(&b, MQTT5_PROP_ASSIGNED_CLIENT_ID, (const uint8_t *)id, strlen(id));
	if (v->keep_alive_told)
		mqtt5_pbuf_num(&b, MQTT5_PROP_SERVER_KEEP_ALIVE, c->keepalive);
	if (b.failed)
		log_error("CONNACK properties for '%s' did not fit; some left out", id);
	mqtt5_out_init(&out, b.p, b.len, NULL, 0);
	send_connack5(w, c, sp, MQTT5_RC_SUCCESS, &out);
}

/* *cp: the connection, which a CONNECT moves; p5 as for handle_publish. */
static enum pkt_result handle_packet(struct worker *w, struct conn **cp,
				     const struct mqtt_packet *pkt, const struct mqtt5_packet *p5)
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
		return handle_connect(w, cp, p5);
	}
	/* Read while authenticating only for its exchange: AUTH alone. */
	if (c->state == CS_AUTHENTICATING && pkt->type != MQTT_AUTH) {
		conn_close(w, c, false, "a packet other than AUTH before CONNACK");
		return PKT_CLOSED;
	}
	switch (pkt->type) {
	case MQTT_PUBLISH:
		return handle_publish(w, c, &pkt->u.publish, p5);
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		return handle_ack(w, c, pkt, p5);
	case MQTT_SUBSCRIBE:
		return handle_subscribe(w, c, pkt, p5);
	case MQTT_UNSUBSCRIBE:
		handle_unsubscribe(w, c, pkt, p5);
		return PKT_OK;
	case MQTT_PINGREQ: {
		uint8_t *p = out_reserve(w, c, 2);

		if (p != NULL)
			mqtt_encode_empty(p, MQTT_PINGRESP);
		return PKT_OK;
	}
	case MQTT_DISCONNECT:
		return handle_disconnect(w, c, p5);
	case MQTT_CONNECT:
		conn_disconnect(w, c, MQTT5_RC_PROTOCOL_ERROR, true, "second CONNECT");
		return PKT_CLOSED;
	case MQTT_AUTH:
		return worker_auth_packet(w, c, p5);
	default:
		conn_disconnect(w, c, MQTT5_RC_PROTOCOL_ERROR, true,
				"server-only packet from client");
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
	conn_disconnect(w, c, mqtt5_result_reason(rc), c->state == CS_ACTIVE, why);
}

/*
 * Decode one packet of 'remaining' body bytes: by the MQTT 5 codec on an
 * MQTT 5 connection and for every CONNECT (*p5 then set, pkt its copy for
 * what both versions share), else by the 3.1.1 codec (*p5 NULL).
 */
static int decode_packet(const struct conn *c, uint8_t first, const uint8_t *body,
			 size_t remaining, struct mqtt_packet *pkt, struct mqtt5_packet *buf5,
			 const struct mqtt5_packet **p5)
{
	int rc;

	*p5 = NULL;
	if (!conn_is_v5(c) && c->state != CS_NEW)
		return mqtt_decode(first, body, remaining, pkt);
	static_assert(sizeof(pkt->u) == sizeof(buf5->u), "both codecs' packets share their union");
	rc = mqtt5_decode(first, body, remaining, buf5);
	if (rc != MQTT_OK)
		return rc;
	pkt->type = buf5->type;
	pkt->flags = buf5->flags;
	/*
	 * What the type uses: the union's fields were just written, and a
	 * copy of it whole reads them back in wider loads, which wait for
	 * the stores.
	 */
	switch (buf5->type) {
	case MQTT_PUBLISH:
		pkt->u.publish = buf5->u.publish;
		break;
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		pkt->u.packet_id = buf5->u.packet_id;
		break;
	default:
		memcpy(&pkt->u, &buf5->u, sizeof(pkt->u));
		break;
	}
	*p5 = buf5;
	return MQTT_OK;
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

	w->window_freed = false;
	while (off < len && !c->paused) {
		struct mqtt_packet pkt;
		struct mqtt5_packet buf5;
		const struct mqtt5_packet *p5;
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
		rc = (conn_is_v5(c) ? mqtt5_fixed_header : mqtt_fixed_header)(p + off, len - off,
									packet_limit(w, c),
									&first, &remaining, &hdr);
		if (rc == MQTT_INCOMPLETE)
			break;
		if (rc == MQTT_OK && hdr + remaining > len - off)
			break;
		if (rc == MQTT_OK)
			rc = decode_packet(c, first, p + off + hdr, remaining, &pkt, &buf5, &p5);
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
		switch (handle_packet(w, cp, &pkt, p5)) {
		case PKT_CLOSED:
			return -1;
		case PKT_PAUSE:
		case PKT_OK:
			break;
		}
		c = *cp;
	}
	if (w->window_freed) {
		w->window_freed = false;
		if (c->qos != NULL)
			pending_pump(w, c);
	}
	return (ssize_t)off;
}
