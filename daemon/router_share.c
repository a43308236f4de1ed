/*
 * router_share.c - shared subscriptions, "$share/{name}/{filter}": the
 * groups, their members, and the choice of one member per message.
 *
 * Owns the groups (struct share_group, by "{name}/{filter}") and the trie
 * of their filters (r->share_trie, whose subscribers are groups). A
 * member is a session holding the group's subscription (its session_sub,
 * shared), on any worker, online or not; the group goes with its last
 * member. router_publish.c delivers to the member share_pick() chooses
 * (docs/arch.md, "Shared subscriptions").
 */
#include <stdlib.h>
#include <string.h>

#include "router_int.h"
#include "topic.h"

struct share_member {
	struct session *s;
	uint8_t qos;                 /* granted to this member */
	uint32_t sub_id;             /* its subscription's identifier (MQTT 5); 0: none */
};

struct share_group {
	UT_hash_handle hh;
	struct share_member *members;
	uint32_t n, cap;
	uint32_t next;               /* round robin: the member tried first */
	uint16_t len;                /* of key */
	uint16_t filter_off;         /* where the filter starts in key */
	char key[];                  /* "{name}/{filter}", NUL-terminated */
};

static const char *share_key(const struct topic_share_parts *p)
{
	return p->name;              /* the name, '/', the filter: contiguous in the subscription */
}

static uint16_t share_key_len(const struct topic_share_parts *p)
{
	return (uint16_t)(p->name_len + 1 + p->filter_len);
}

static struct share_group *share_find(const struct router *r, const struct topic_share_parts *p)
{
	struct share_group *g;

	HASH_FIND(hh, r->shares, share_key(p), share_key_len(p), g);
	return g;
}

static struct share_group *share_group_new(struct router *r, const struct topic_share_parts *p)
{
	uint16_t len = share_key_len(p);
	struct share_group *g = calloc(1, sizeof(*g) + (size_t)len + 1);

	if (!g)
		return NULL;
	memcpy(g->key, share_key(p), len);
	g->len = len;
	g->filter_off = (uint16_t)(p->name_len + 1);
	if (topic_trie_subscribe(r->share_trie, g->key + g->filter_off, p->filter_len, g, 0) < 0)
		goto fail;
	HASH_ADD_KEYPTR(hh, r->shares, g->key, g->len, g);
	if (!g->hh.tbl) {
		topic_trie_unsubscribe(r->share_trie, g->key + g->filter_off, p->filter_len, g);
		goto fail;
	}
	return g;
fail:
	free(g);
	return NULL;
}

static void share_group_free(struct router *r, struct share_group *g)
{
	topic_trie_unsubscribe(r->share_trie, g->key + g->filter_off, g->len - g->filter_off, g);
	HASH_DEL(r->shares, g);
	free(g->members);
	free(g);
}

static struct share_member *share_member_find(struct share_group *g, const struct session *s)
{
	for (uint32_t i = 0; i < g->n; i++)
		if (g->members[i].s == s)
			return &g->members[i];
	return NULL;
}

int router_share_join(struct router *r, struct session *s, const struct topic_share_parts *p,
		      uint8_t qos, uint32_t sub_id)
{
	struct share_group *g = share_find(r, p);
	struct share_member *mb;

	if (!g && !(g = share_group_new(r, p)))
		return -1;
	if ((mb = share_member_find(g, s)) != NULL) {
		mb->qos = qos;
		mb->sub_id = sub_id;
		return 0;
	}
	if (g->n == g->cap) {
		uint32_t cap = g->cap ? g->cap * 2 : 4;
		struct share_member *grown = reallocarray(g->members, cap, sizeof(*grown));

		if (!grown) {
			if (!g->n)
				share_group_free(r, g);
			return -1;
		}
		g->members = grown;
		g->cap = cap;
	}
	g->members[g->n++] = (struct share_member){ s, qos, sub_id };
	return 0;
}

void router_share_leave(struct router *r, struct session *s, const char *filter, uint16_t len)
{
	struct topic_share_parts p;
	struct share_group *g;
	struct share_member *mb;

	if (topic_share_parse(filter, len, &p) != TOPIC_SHARE_OK || !(g = share_find(r, &p)) ||
	    !(mb = share_member_find(g, s)))
		return;
	*mb = g->members[--g->n];
	if (!g->n) {
		share_group_free(r, g);
		return;
	}
	if (g->next >= g->n)
		g->next = 0;
}

void router_share_free(struct router *r)
{
	struct share_group *g, *tmp;

	HASH_ITER(hh, r->shares, g, tmp)
		share_group_free(r, g);
	topic_trie_free(&r->share_trie);
}

static bool share_hash_publisher(const struct router *r)
{
	return strcmp(r->cfg->shared_subscription_policy, "hash_publisher") == 0;
}

/* Online on a live connection: not one of a dead worker's, which the router is closing. */
static bool share_member_online(const struct router *r, const struct session *s)
{
	unsigned w = conn_id_worker(s->conn);

	return s->online && !s->pending && w < IOTD_MAX_WORKERS &&
	       conn_id_epoch(s->conn) == (r->worker_epoch[w] & 0xffff);
}

/*
 * The member of g that takes m, the QoS granted to it in *qos and its
 * subscription's identifier in *sub_id; NULL
 * when none may. From the policy's first choice on, the first member
 * that can take it now: online, and for QoS 1/2 with room in its window
 * as far as the router knows (the copies it holds of what the member's
 * connection has not finished). Failing that an online one, and failing
 * that an offline persistent one, which queues it. except: a member
 * that does not count (the one whose connection just closed).
 */
struct session *share_pick(struct router *r, struct share_group *g, const struct router_msg *m,
			   const struct session *except, uint8_t *qos, uint32_t *sub_id)
{
	uint32_t start, chosen = UINT32_MAX, online = UINT32_MAX, offline = UINT32_MAX;

	if (!g->n)
		return NULL;
	if (share_hash_publisher(r))
		start = m->from ? hidx_hash_bytes(m->from->client_id, m->from->client_id_len) % g->n : 0;
	else
		start = g->next % g->n;
	for (uint32_t k = 0; k < g->n && chosen == UINT32_MAX; k++) {
		uint32_t i = (start + k) % g->n;
		const struct share_member *mb = &g->members[i];
		const struct session *s = mb->s;
		uint8_t q = MIN(m->qos, mb->qos);

		if (s == except || !router_acl_allows(r, s, m->topic, m->topic_len, ACL_READ))
			continue;
		if (share_member_online(r, s)) {
			if (q == 0 || s->q_at_worker < (uint32_t)r->cfg->max_inflight)
				chosen = i;
			else if (online == UINT32_MAX)
				online = i;
		} else if (!s->clean && offline == UINT32_MAX &&
			   (q > 0 || r->cfg->queue_qos0_messages)) {
			offline = i;
		}
	}
	if (chosen == UINT32_MAX)
		chosen = online != UINT32_MAX ? online : offline;
	if (chosen == UINT32_MAX)
		return NULL;
	if (!share_hash_publisher(r))
		g->next = (chosen + 1) % g->n;
	*qos = g->members[chosen].qos;
	*sub_id = g->members[chosen].sub_id;
	return g->members[chosen].s;
}

/*
 * The group of s's shared subscriptions that matches topic, or NULL: the
 * one a message on it came to s through.
 */
static struct share_group *share_group_of(const struct router *r, const struct session *s,
					  const char *topic, uint16_t len)
{
	const struct session_sub *sub, *tmp;
	struct topic_share_parts p;

	HASH_ITER(hh, s->subs, sub, tmp) {
		if (sub->shared && topic_share_parse(sub->filter, sub->len, &p) == TOPIC_SHARE_OK &&
		    topic_matches(p.filter, p.filter_len, topic, len))
			return share_find(r, &p);
	}
	return NULL;
}

/*
 * A clean session's connection is gone: the QoS 1/2 messages its
 * connection had not finished, which came through a shared subscription,
 * go to another member of their group (the router kept a copy of each,
 * router_publish.c). One whose PUBREC came (MSG_PUBREL) was delivered:
 * it goes nowhere.
 */
void router_share_reroute(struct router *r, struct session *s)
{
	for (struct session_msg *q = s->q_head; q && s->q_at_worker; q = q->next) {
		/* Its publisher is not known any more: hash_publisher starts at the first member. */
		struct router_msg m;
		struct share_group *g;

		if (!q->at_worker || q->state == MSG_PUBREL)
			continue;
		session_msg_view(q, &m);
		g = share_group_of(r, s, m.topic, m.topic_len);
		if (g)
			router_share_deliver_one(r, g, &m, s, q->body);
		else
			log_debug("router: session %u: a message on '%.*s' has no group left to go to",
				  s->sid, (int)m.topic_len, m.topic);
	}
}
