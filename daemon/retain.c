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
 *
 * A walk is a small state machine (struct retain_cursor) advanced one node
 * at a time, so that it can stop after any node and resume later: the
 * router sends a subscription's retained messages at the pace its ring
 * takes them. Between two calls the store may change; the node a cursor
 * stands on is pinned (not freed even when emptied), and its ancestors
 * live as long as it does, so a resumed walk never touches freed memory.
 * Every stored message carries the store's sequence number at the time it
 * was stored: a cursor skips those newer than itself.
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
	uint32_t props_len;
	uint64_t seq;                /* rs->seq when stored: newer than a cursor, skipped by it */
	uint64_t expires_at;         /* ms since the epoch; 0: never */
	uint8_t qos;
	char data[];                 /* topic, then payload, then properties */
};

struct retain_node {
	UT_hash_handle hh;           /* in parent->children */
	struct retain_node *parent;  /* NULL for the root */
	struct retain_node *children;
	struct retain_msg *msg;      /* NULL when only a path to deeper topics */
	uint32_t len;
	uint32_t pins;               /* cursors standing here: not pruned while > 0 */
	char level[];
};

struct retain_store {
	struct retain_node *root;    /* stands for "before the first level" */
	size_t count, bytes;
	size_t max_count, max_bytes;
	size_t n_expiring;           /* messages with an expiry: retain_expire() has work */
	struct retain_node *sweep;   /* where retain_expire() goes on (pinned); NULL: the root */
	uint64_t seq;                /* bumped by every message stored */
};

static size_t retain_msg_size(const struct retain_msg *m)
{
	return m->topic_len + m->payload_len + m->props_len;
}

/* Its size: topic, payload and properties; SIZE_MAX when that does not fit. */
static size_t retained_size(const struct retained *in)
{
	if (in->topic_len > SIZE_MAX - in->payload_len ||
	    in->props_len > SIZE_MAX - in->topic_len - in->payload_len)
		return SIZE_MAX;
	return in->topic_len + in->payload_len + in->props_len;
}

static struct retain_msg *retain_msg_new(const struct retained *in)
{
	struct retain_msg *m;
	size_t size = retained_size(in);

	if (size > SIZE_MAX - sizeof(*m))
		return NULL;
	m = malloc(sizeof(*m) + size);
	if (!m)
		return NULL;
	m->topic_len = in->topic_len;
	m->payload_len = in->payload_len;
	m->props_len = in->props_len;
	m->expires_at = in->expires_at;
	m->qos = in->qos;
	memcpy(m->data, in->topic, in->topic_len);
	memcpy(m->data + in->topic_len, in->payload, in->payload_len);
	if (in->props_len)
		memcpy(m->data + in->topic_len + in->payload_len, in->props, in->props_len);
	return m;
}

/* What a walk reports of m. */
static struct retained retain_msg_view(const struct retain_msg *m)
{
	return (struct retained){
		.topic = m->data, .topic_len = m->topic_len,
		.payload = (const uint8_t *)m->data + m->topic_len, .payload_len = m->payload_len,
		.props = (const uint8_t *)m->data + m->topic_len + m->payload_len,
		.props_len = m->props_len, .expires_at = m->expires_at, .qos = m->qos,
	};
}

/* n's message goes (replaced, cleared or expired); the counts follow. */
static void retain_msg_drop(struct retain_store *rs, struct retain_node *n)
{
	rs->count--;
	rs->bytes -= retain_msg_size(n->msg);
	rs->n_expiring -= n->msg->expires_at != 0;
	free(n->msg);
	n->msg = NULL;
}

/* m becomes n's message, counted; the caller dropped any earlier one. */
static void retain_msg_set(struct retain_store *rs, struct retain_node *n, struct retain_msg *m)
{
	n->msg = m;
	m->seq = ++rs->seq;
	rs->count++;
	rs->bytes += retain_msg_size(m);
	rs->n_expiring += m->expires_at != 0;
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
	n->len = (uint32_t)len;
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
	while (n != rs->root && !n->msg && !n->children && !n->pins) {
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
	retain_msg_drop(rs, n);
	retain_prune(rs, n);
	return RETAIN_CLEARED;
}

static int retain_replace(struct retain_store *rs, struct retain_node *n,
			  const struct retained *in, size_t need)
{
	size_t others = rs->bytes - retain_msg_size(n->msg);
	struct retain_msg *m;

	/* Not growing is always allowed: a lowered budget must not freeze a stale value. */
	if (need > retain_msg_size(n->msg) && retain_over_budget(rs, others, need))
		return RETAIN_FULL;
	m = retain_msg_new(in);
	if (!m)
		return RETAIN_NOMEM;
	retain_msg_drop(rs, n);
	retain_msg_set(rs, n, m);
	return RETAIN_STORED;
}

/* The topic must have passed topic_name_valid; NULL arguments store nothing. */
int retain_put_msg(struct retain_store *rs, const struct retained *in)
{
	struct retain_node *n;
	struct retain_msg *m;
	size_t off, need;

	if (!rs || !in->topic || (in->payload_len && !in->payload) ||
	    (in->props_len && !in->props))
		return RETAIN_NOMEM;
	if (in->payload_len == 0)
		return retain_clear(rs, in->topic, in->topic_len);
	need = retained_size(in);
	if (need == SIZE_MAX)
		return RETAIN_NOMEM;
	n = retain_descend(rs, in->topic, in->topic_len, &off);
	if (off > in->topic_len && n->msg)
		return retain_replace(rs, n, in, need);
	if ((rs->max_count && rs->count >= rs->max_count) || retain_over_budget(rs, rs->bytes, need))
		return RETAIN_FULL;
	m = retain_msg_new(in);
	if (!m)
		return RETAIN_NOMEM;
	n = retain_build(rs, n, in->topic, in->topic_len, off);
	if (!n)
		goto fail;
	retain_msg_set(rs, n, m);
	return RETAIN_STORED;
fail:
	free(m);
	return RETAIN_NOMEM;
}

int retain_put(struct retain_store *rs, const char *topic, size_t topic_len,
	       const uint8_t *payload, size_t payload_len, uint8_t qos)
{
	const struct retained in = { .topic = topic, .topic_len = topic_len, .payload = payload,
				     .payload_len = payload_len, .qos = qos };

	return retain_put_msg(rs, &in);
}

/* The node after n in a pre-order walk of the whole tree ('$' topics too); NULL after the last. */
static struct retain_node *retain_preorder_next(const struct retain_node *root,
					       struct retain_node *n)
{
	if (n->children)
		return n->children;
	while (n != root && !n->hh.next)
		n = n->parent;
	return n == root ? NULL : n->hh.next;
}

size_t retain_expire(struct retain_store *rs, uint64_t now, size_t steps, retain_cb cb,
		     void *arg)
{
	struct retain_node *n, *next;
	size_t gone = 0;

	if (!rs || !rs->n_expiring)
		return 0;
	n = rs->sweep ? rs->sweep : rs->root;
	if (rs->sweep)
		rs->sweep->pins--;
	for (; n && steps > 0; steps--, n = next) {
		if (n->msg && n->msg->expires_at && n->msg->expires_at <= now) {
			struct retained view = retain_msg_view(n->msg);

			cb(&view, arg);
			retain_msg_drop(rs, n);
			gone++;
		}
		next = retain_preorder_next(rs->root, n);
		/* Its next is a child (then n stays) or not below n: pruning n spares it. */
		retain_prune(rs, n);
	}
	rs->sweep = n;
	if (n)
		n->pins++;
	return gone;
}

size_t retain_count(const struct retain_store *rs)
{
	return rs ? rs->count : 0;
}

size_t retain_bytes(const struct retain_store *rs)
{
	return rs ? rs->bytes : 0;
}

/* ---- matching: a resumable walk ---- */

enum retain_step {
	RETAIN_ENTER,     /* at n, filter level off still to match below it */
	RETAIN_SUBTREE,   /* "#": at n inside top's subtree, n not yet reported */
	RETAIN_CLIMB,     /* "#": n's subtree done; on to its next sibling, within top */
	RETAIN_BACK,      /* n is done: back up to the next candidate */
	RETAIN_DONE,
};

/* [MQTT-4.7.2-1]: wildcards in the first level skip the root's '$' children. */
static struct retain_node *retain_skip_dollar(const struct retain_node *root,
					      struct retain_node *n)
{
	while (n && n->parent == root && n->len > 0 && n->level[0] == '$')
		n = n->hh.next;
	return n;
}

static struct retain_node *retain_first_child(const struct retain_node *root,
					      const struct retain_node *n)
{
	return retain_skip_dollar(root, n->children);
}

static struct retain_node *retain_next_sibling(const struct retain_node *root,
					       const struct retain_node *n)
{
	return retain_skip_dollar(root, n->hh.next);
}

/* Report n's message unless the cursor is older than it; false: the callback says stop. */
static bool retain_report(const struct retain_cursor *c, const struct retain_node *n,
			  retain_cursor_cb cb, void *arg)
{
	const struct retain_msg *m = n->msg;
	struct retained view;

	if (!m || m->seq > c->since)
		return true;
	view = retain_msg_view(m);
	return cb(&view, arg);
}

/* ENTER: match the filter level at off against the children of n. */
static void retain_step_enter(struct retain_cursor *c, const struct retain_node *root,
			      struct retain_node *n, retain_cursor_cb cb, void *arg, bool *go_on)
{
	struct retain_node *next;
	size_t end;

	if (c->off > c->len) {
		*go_on = retain_report(c, n, cb, arg);
		c->step = RETAIN_BACK;
		return;
	}
	end = topic_level_end(c->filter, c->len, c->off);
	switch (topic_level_kind(c->filter, c->off, end)) {
	case TOPIC_HASH:
		/* "#" matches n itself too ("a/#" matches "a") and all below it. */
		c->top = n;
		c->step = RETAIN_SUBTREE;
		return;
	case TOPIC_PLUS:
		next = retain_first_child(root, n);
		break;
	default:
		next = retain_node_child(n, c->filter + c->off, end - c->off);
		break;
	}
	if (next) {
		c->n = next;
		c->off = end + 1;
	} else {
		c->step = RETAIN_BACK;
	}
}

/* BACK: only a "+" level has siblings left to try; they share off. */
static void retain_step_back(struct retain_cursor *c, const struct retain_node *root,
			     struct retain_node *n)
{
	struct retain_node *next;
	size_t prev;

	if (n == root) {
		c->step = RETAIN_DONE;
		return;
	}
	prev = topic_level_prev(c->filter, c->off);
	if (topic_level_kind(c->filter, prev, c->off - 1) == TOPIC_PLUS &&
	    (next = retain_next_sibling(root, n))) {
		c->n = next;
		c->step = RETAIN_ENTER;
		return;
	}
	c->off = prev;
	c->n = n->parent;
}

/* One move of the walk (one node visited); *go_on false when the callback said stop. */
static void retain_step(struct retain_cursor *c, const struct retain_node *root,
			retain_cursor_cb cb, void *arg, bool *go_on)
{
	struct retain_node *n = c->n, *next;

	switch (c->step) {
	case RETAIN_ENTER:
		retain_step_enter(c, root, n, cb, arg, go_on);
		break;
	case RETAIN_SUBTREE:
		/* Pre-order: n, then its children. */
		*go_on = retain_report(c, n, cb, arg);
		next = retain_first_child(root, n);
		if (next)
			c->n = next;
		else
			c->step = RETAIN_CLIMB;
		break;
	case RETAIN_CLIMB:
		if (n == c->top) {
			c->top = NULL;
			c->step = RETAIN_BACK;
		} else if ((next = retain_next_sibling(root, n))) {
			c->n = next;
			c->step = RETAIN_SUBTREE;
		} else {
			c->n = n->parent;
		}
		break;
	case RETAIN_BACK:
		retain_step_back(c, root, n);
		break;
	default:
		break;
	}
}

static void retain_cursor_init(struct retain_cursor *c, struct retain_node *root,
			       const char *filter, size_t len, uint64_t since)
{
	*c = (struct retain_cursor){
		.filter = filter, .len = len, .n = root, .since = since, .step = RETAIN_ENTER,
	};
}

void retain_cursor_start(struct retain_store *rs, struct retain_cursor *c, const char *filter,
			 size_t len)
{
	retain_cursor_init(c, rs->root, filter, len, rs->seq);
	c->n->pins++;
}

void retain_cursor_stop(struct retain_store *rs, struct retain_cursor *c)
{
	struct retain_node *n = c->n;

	if (!n)
		return;
	c->n = NULL;
	c->step = RETAIN_DONE;
	n->pins--;
	retain_prune(rs, n);
}

bool retain_cursor_next(struct retain_store *rs, struct retain_cursor *c, size_t *steps,
			retain_cursor_cb cb, void *arg)
{
	struct retain_node *was = c->n;
	bool go_on = true;

	if (!was)
		return true;
	while (*steps > 0 && go_on && c->step != RETAIN_DONE) {
		retain_step(c, rs->root, cb, arg, &go_on);
		(*steps)--;
	}
	if (c->step == RETAIN_DONE) {
		c->n = was;
		retain_cursor_stop(rs, c);
		return true;
	}
	/* The pin moves with the cursor; the node it leaves may be empty by now. */
	if (c->n != was) {
		c->n->pins++;
		was->pins--;
		retain_prune(rs, was);
	}
	return false;
}

struct retain_match_ctx {
	retain_cb cb;
	void *arg;
};

static bool retain_match_cb(const struct retained *m, void *arg)
{
	const struct retain_match_ctx *ctx = arg;

	ctx->cb(m, ctx->arg);
	return true;
}

/* The whole walk at once: nothing changes the store meanwhile, so nothing is pinned. */
void retain_match(const struct retain_store *rs, const char *filter, size_t filter_len,
		  retain_cb cb, void *arg)
{
	struct retain_match_ctx ctx = { cb, arg };
	struct retain_cursor c;
	bool go_on = true;

	if (!rs || !filter || !cb)
		return;
	retain_cursor_init(&c, rs->root, filter, filter_len, UINT64_MAX);
	while (c.step != RETAIN_DONE)
		retain_step(&c, rs->root, retain_match_cb, &ctx, &go_on);
}
