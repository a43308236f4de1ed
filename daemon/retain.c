/*
 * retain.c - the retained-message store.
 *
 * Owns every node of the level tree and a private copy of each retained
 * topic and payload (the caller's buffers are transient). The router is
 * the only user, from one thread; callbacks must not change the store.
 *
 * Topic names hold no wildcards, so every node is a literal level kept in
 * its parent's uthash table. Wildcard filters are resolved while walking:
 * an exact filter is a straight lookup, "+" visits siblings and "#" a
 * subtree. Walks use parent pointers and uthash's sibling list instead of
 * recursion, so deep topics cannot exhaust the stack.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "retain.h"
#include "topic.h"

/* Out of memory in HASH_ADD must come back to us, not exit the router. */
#define HASH_NONFATAL_OOM 1
#include "keyhash.h"  /* uthash, keyed */

struct retain_msg {
	size_t topic_len, payload_len;
	uint8_t qos;
	char data[];                 /* topic, then payload */
};

struct retain_node {
	UT_hash_handle hh;           /* in parent->children */
	struct retain_node *parent;  /* NULL for the root */
	struct retain_node *children;
	struct retain_msg *msg;      /* NULL when only a path to deeper topics */
	size_t len;
	char level[];
};

struct retain_store {
	struct retain_node *root;    /* stands for "before the first level" */
	size_t count, bytes;
	size_t max_count, max_bytes;
};

static size_t retain_msg_size(const struct retain_msg *m)
{
	return m->topic_len + m->payload_len;
}

static struct retain_msg *retain_msg_new(const char *topic, size_t topic_len,
					 const uint8_t *payload, size_t payload_len,
					 uint8_t qos)
{
	struct retain_msg *m;
	size_t size = topic_len + payload_len; /* overflow ruled out by retain_put */

	if (size > SIZE_MAX - sizeof(*m))
		return NULL;
	m = malloc(sizeof(*m) + size);
	if (!m)
		return NULL;
	m->topic_len = topic_len;
	m->payload_len = payload_len;
	m->qos = qos;
	memcpy(m->data, topic, topic_len);
	memcpy(m->data + topic_len, payload, payload_len);
	return m;
}

static struct retain_node *retain_node_new(struct retain_node *parent, const char *level,
					   size_t len)
{
	struct retain_node *n;

	if (len > UINT_MAX || len > SIZE_MAX - sizeof(*n))
		return NULL;
	n = calloc(1, sizeof(*n) + len);
	if (!n)
		return NULL;
	n->parent = parent;
	n->len = len;
	if (len)
		memcpy(n->level, level, len);
	return n;
}

static struct retain_node *retain_node_child(const struct retain_node *n, const char *level,
					     size_t len)
{
	struct retain_node *c;

	if (len > UINT_MAX)
		return NULL;
	HASH_FIND(hh, n->children, level, len, c);
	return c;
}

static struct retain_node *retain_node_add(struct retain_node *n, const char *level,
					   size_t len)
{
	struct retain_node *c = retain_node_new(n, level, len);

	if (!c)
		return NULL;
	HASH_ADD_KEYPTR(hh, n->children, c->level, c->len, c);
	if (!c->hh.tbl) { /* uthash ran out of memory and left the table as it was */
		free(c);
		return NULL;
	}
	return c;
}

/* Frees n and its empty ancestors: a node lives only while something uses it. */
static void retain_prune(struct retain_store *rs, struct retain_node *n)
{
	while (n != rs->root && !n->msg && !n->children) {
		struct retain_node *p = n->parent;

		HASH_DELETE(hh, p->children, n);
		free(n);
		n = p;
	}
}

/*
 * The deepest existing node on the path of topic; *off is where the first
 * missing level starts, or len + 1 when the whole path exists.
 */
static struct retain_node *retain_descend(const struct retain_store *rs, const char *topic,
					  size_t len, size_t *off)
{
	struct retain_node *n = rs->root;
	size_t o = 0;

	while (o <= len) {
		size_t end = topic_level_end(topic, len, o);
		struct retain_node *c = retain_node_child(n, topic + o, end - o);

		if (!c)
			break;
		n = c;
		o = end + 1;
	}
	*off = o;
	return n;
}

/* Creates the levels of topic from off on below n; prunes what it made on failure. */
static struct retain_node *retain_build(struct retain_store *rs, struct retain_node *n,
					const char *topic, size_t len, size_t off)
{
	while (off <= len) {
		size_t end = topic_level_end(topic, len, off);
		struct retain_node *c = retain_node_add(n, topic + off, end - off);

		if (!c) {
			retain_prune(rs, n);
			return NULL;
		}
		n = c;
		off = end + 1;
	}
	return n;
}

struct retain_store *retain_new(size_t max_count, size_t max_bytes)
{
	struct retain_store *rs = calloc(1, sizeof(*rs));

	if (!rs)
		return NULL;
	rs->root = retain_node_new(NULL, NULL, 0);
	if (!rs->root)
		goto fail;
	rs->max_count = max_count;
	rs->max_bytes = max_bytes;
	return rs;
fail:
	free(rs);
	return NULL;
}

void retain_set_limits(struct retain_store *rs, size_t max_count, size_t max_bytes)
{
	rs->max_count = max_count;
	rs->max_bytes = max_bytes;
}

/* Would `need` more bytes on top of `held` pass the byte budget? (held may be past it after a reload.) */
static bool retain_over_budget(const struct retain_store *rs, size_t held, size_t need)
{
	return rs->max_bytes && (held > rs->max_bytes || need > rs->max_bytes - held);
}

void retain_free(struct retain_store **rsp)
{
	struct retain_node *n;

	if (!rsp || !*rsp)
		return;
	/* Post-order by parent pointers: each leaf is freed, then its parent revisited. */
	n = (*rsp)->root;
	while (n) {
		struct retain_node *p = n->parent;

		if (n->children) {
			n = n->children;
			continue;
		}
		if (p)
			HASH_DELETE(hh, p->children, n);
		free(n->msg);
		free(n);
		n = p;
	}
	free(*rsp);
	*rsp = NULL;
}

static int retain_clear(struct retain_store *rs, const char *topic, size_t len)
{
	size_t off;
	struct retain_node *n = retain_descend(rs, topic, len, &off);

	if (off <= len || !n->msg)
		return RETAIN_CLEARED;
	rs->count--;
	rs->bytes -= retain_msg_size(n->msg);
	free(n->msg);
	n->msg = NULL;
	retain_prune(rs, n);
	return RETAIN_CLEARED;
}

static int retain_replace(struct retain_store *rs, struct retain_node *n, const char *topic,
			  size_t topic_len, const uint8_t *payload, size_t payload_len,
			  uint8_t qos)
{
	size_t others = rs->bytes - retain_msg_size(n->msg);
	size_t need = topic_len + payload_len;
	struct retain_msg *m;

	/* Not growing is always allowed: a lowered budget must not freeze a stale value. */
	if (need > retain_msg_size(n->msg) && retain_over_budget(rs, others, need))
		return RETAIN_FULL;
	m = retain_msg_new(topic, topic_len, payload, payload_len, qos);
	if (!m)
		return RETAIN_NOMEM;
	free(n->msg);
	n->msg = m;
	rs->bytes = others + need;
	return RETAIN_STORED;
}

/* The topic must have passed topic_name_valid; NULL arguments store nothing. */
int retain_put(struct retain_store *rs, const char *topic, size_t topic_len,
	       const uint8_t *payload, size_t payload_len, uint8_t qos)
{
	struct retain_node *n;
	struct retain_msg *m;
	size_t off, need;

	if (!rs || !topic || (payload_len && !payload))
		return RETAIN_NOMEM;
	if (payload_len == 0)
		return retain_clear(rs, topic, topic_len);
	if (topic_len > SIZE_MAX - payload_len)
		return RETAIN_NOMEM;
	need = topic_len + payload_len;
	n = retain_descend(rs, topic, topic_len, &off);
	if (off > topic_len && n->msg)
		return retain_replace(rs, n, topic, topic_len, payload, payload_len, qos);
	if ((rs->max_count && rs->count >= rs->max_count) || retain_over_budget(rs, rs->bytes, need))
		return RETAIN_FULL;
	m = retain_msg_new(topic, topic_len, payload, payload_len, qos);
	if (!m)
		return RETAIN_NOMEM;
	n = retain_build(rs, n, topic, topic_len, off);
	if (!n)
		goto fail;
	n->msg = m;
	rs->count++;
	rs->bytes += need;
	return RETAIN_STORED;
fail:
	free(m);
	return RETAIN_NOMEM;
}

size_t retain_count(const struct retain_store *rs)
{
	return rs ? rs->count : 0;
}

size_t retain_bytes(const struct retain_store *rs)
{
	return rs ? rs->bytes : 0;
}

/* ---- matching ---- */

struct retain_walk {
	const struct retain_node *root;
	const char *filter;
	size_t len;
	retain_cb cb;
	void *arg;
};

static void retain_report(const struct retain_walk *w, const struct retain_node *n)
{
	const struct retain_msg *m = n->msg;

	if (m)
		w->cb(m->data, m->topic_len, (const uint8_t *)m->data + m->topic_len,
		      m->payload_len, m->qos, w->arg);
}

/* [MQTT-4.7.2-1]: wildcards in the first level skip the root's '$' children. */
static const struct retain_node *retain_skip_dollar(const struct retain_walk *w,
						    const struct retain_node *n)
{
	while (n && n->parent == w->root && n->len > 0 && n->level[0] == '$')
		n = n->hh.next;
	return n;
}

static const struct retain_node *retain_first_child(const struct retain_walk *w,
						    const struct retain_node *n)
{
	return retain_skip_dollar(w, n->children);
}

static const struct retain_node *retain_next_sibling(const struct retain_walk *w,
						     const struct retain_node *n)
{
	return retain_skip_dollar(w, n->hh.next);
}

/* "#": top and everything below it, pre-order, without recursion. */
static void retain_report_subtree(const struct retain_walk *w, const struct retain_node *top)
{
	const struct retain_node *n = top;

	for (;;) {
		const struct retain_node *c;

		retain_report(w, n);
		c = retain_first_child(w, n);
		if (c) {
			n = c;
			continue;
		}
		for (;;) {
			const struct retain_node *s;

			if (n == top)
				return;
			s = retain_next_sibling(w, n);
			if (s) {
				n = s;
				break;
			}
			n = n->parent;
		}
	}
}

/*
 * Reports what n matches when the filter levels before off are consumed,
 * and returns the first child to go down into, with *next set to the
 * filter offset after that child's level.
 */
static const struct retain_node *retain_walk_enter(const struct retain_walk *w,
						   const struct retain_node *n, size_t off,
						   size_t *next)
{
	size_t end;

	if (off > w->len) {
		retain_report(w, n);
		return NULL;
	}
	end = topic_level_end(w->filter, w->len, off);
	*next = end + 1;
	switch (topic_level_kind(w->filter, off, end)) {
	case TOPIC_HASH:
		retain_report_subtree(w, n);
		return NULL;
	case TOPIC_PLUS:
		return retain_first_child(w, n);
	default:
		return retain_node_child(n, w->filter + off, end - off);
	}
}

void retain_match(const struct retain_store *rs, const char *filter, size_t filter_len,
		  retain_cb cb, void *arg)
{
	struct retain_walk w;
	const struct retain_node *n;
	size_t off = 0;

	if (!rs || !filter || !cb)
		return;
	w = (struct retain_walk){
		.root = rs->root, .filter = filter, .len = filter_len, .cb = cb, .arg = arg,
	};
	/* Depth first; off is where the filter level below n starts, len + 1 past the end. */
	n = w.root;
	for (;;) {
		size_t next = 0;
		const struct retain_node *c = retain_walk_enter(&w, n, off, &next);

		if (c) {
			n = c;
			off = next;
			continue;
		}
		for (;;) {
			size_t prev;

			if (n == w.root)
				return;
			prev = topic_level_prev(filter, off);
			/* Only a "+" level has siblings left to try; they share off. */
			if (topic_level_kind(filter, prev, off - 1) == TOPIC_PLUS) {
				const struct retain_node *s = retain_next_sibling(&w, n);

				if (s) {
					n = s;
					break;
				}
			}
			off = prev;
			n = n->parent;
		}
	}
}
