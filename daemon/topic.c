/*
 * topic.c - topic name and filter rules, and the subscription trie.
 *
 * Owns the trie's nodes and each node's subscriber array; never the
 * subscribers themselves. The router is the only user, from one thread;
 * a match callback must not change the trie it is called from.
 *
 * A node stands for one filter level. Literal levels hang off their parent
 * in a uthash table keyed by the level bytes; "+" and "#" get a slot of
 * their own so that matching never has to hash them. Matching and freeing
 * walk the trie with parent pointers instead of recursion or a heap
 * stack: a topic may have tens of thousands of levels, and the match path
 * must not allocate.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "topic.h"

/* Out of memory in HASH_ADD must come back to us, not exit the router. */
#define HASH_NONFATAL_OOM 1
#include "keyhash.h"  /* uthash, keyed */

struct topic_sub {
	void *subscriber;
	uint8_t qos;
};

struct topic_node {
	UT_hash_handle hh;            /* in parent->children (literal levels only) */
	struct topic_node *parent;    /* NULL for the root */
	struct topic_node *children;  /* literal levels */
	struct topic_node *plus;      /* the "+" level */
	struct topic_node *hash;      /* the "#" level; never has children of its own */
	struct topic_sub *subs;
	size_t nsubs, cap;
	size_t len;
	char level[];                 /* the level bytes, for the hash key */
};

struct topic_trie {
	struct topic_node *root;      /* stands for "before the first level" */
	size_t count;
};

#define TOPIC_SUBS_MIN 4

/* '+' and '#' in a filter must fill their level; '#' must also be last. */
static bool topic_wildcard_ok(const char *s, size_t len, size_t i)
{
	bool alone = (i == 0 || s[i - 1] == '/') && (i + 1 == len || s[i + 1] == '/');

	if (!alone)
		return false;
	return s[i] != '#' || i + 1 == len;
}

static bool topic_check(const char *s, size_t len, size_t max_levels, size_t max_len,
			bool filter)
{
	size_t levels = 1;

	if (!s || len == 0 || (max_len && len > max_len))
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '/') {
			if (max_levels && ++levels > max_levels)
				return false;
			continue;
		}
		if (s[i] != '+' && s[i] != '#')
			continue;
		if (!filter || !topic_wildcard_ok(s, len, i))
			return false;
	}
	return true;
}

bool topic_name_valid(const char *t, size_t len, size_t max_levels, size_t max_len)
{
	return topic_check(t, len, max_levels, max_len, false);
}

bool topic_filter_valid(const char *f, size_t len, size_t max_levels, size_t max_len)
{
	return topic_check(f, len, max_levels, max_len, true);
}

enum topic_share topic_share_parse(const char *f, size_t len, struct topic_share_parts *p)
{
	const char *name, *slash;
	size_t rest;

	if (!f || len < TOPIC_SHARE_PREFIX_LEN || memcmp(f, TOPIC_SHARE_PREFIX, TOPIC_SHARE_PREFIX_LEN))
		return TOPIC_SHARE_NONE;
	name = f + TOPIC_SHARE_PREFIX_LEN;
	rest = len - TOPIC_SHARE_PREFIX_LEN;
	slash = memchr(name, '/', rest);
	if (!slash || slash == name || memchr(name, '+', (size_t)(slash - name)) ||
	    memchr(name, '#', (size_t)(slash - name)))
		return TOPIC_SHARE_BAD;
	p->name = name;
	p->name_len = (size_t)(slash - name);
	p->filter = slash + 1;
	p->filter_len = rest - p->name_len - 1;
	if (!topic_filter_valid(p->filter, p->filter_len, 0, 0))
		return TOPIC_SHARE_BAD;
	return TOPIC_SHARE_OK;
}

/* [MQTT-4.7.2-1]: a first-level wildcard never matches a '$' topic. */
static bool topic_first_level_wild(const char *f, size_t flen)
{
	size_t end = topic_level_end(f, flen, 0);

	return topic_level_kind(f, 0, end) != TOPIC_LITERAL;
}

bool topic_matches(const char *filter, size_t flen, const char *topic, size_t tlen)
{
	size_t fo = 0, to = 0;

	if (!filter || !topic)
		return false;
	if (tlen > 0 && topic[0] == '$' && topic_first_level_wild(filter, flen))
		return false;
	/* fo/to are level starts; len + 1 means every level was consumed. */
	for (;;) {
		size_t fe, te;
		enum topic_kind kind;

		if (fo > flen)
			return to > tlen;
		fe = topic_level_end(filter, flen, fo);
		kind = topic_level_kind(filter, fo, fe);
		if (kind == TOPIC_HASH)
			return true; /* also covers the parent level: "a/#" matches "a" */
		if (to > tlen)
			return false;
		te = topic_level_end(topic, tlen, to);
		if (kind == TOPIC_LITERAL &&
		    (fe - fo != te - to || memcmp(filter + fo, topic + to, fe - fo) != 0))
			return false;
		fo = fe + 1;
		to = te + 1;
	}
}

/* ---- the trie ---- */

static struct topic_node *topic_node_new(struct topic_node *parent, const char *level,
					 size_t len)
{
	struct topic_node *n;

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

static bool topic_node_empty(const struct topic_node *n)
{
	return n->nsubs == 0 && !n->children && !n->plus && !n->hash;
}

static void topic_node_detach(struct topic_node *n)
{
	struct topic_node *p = n->parent;

	if (p->plus == n)
		p->plus = NULL;
	else if (p->hash == n)
		p->hash = NULL;
	else
		HASH_DELETE(hh, p->children, n);
}

static struct topic_node *topic_node_literal(const struct topic_node *n, const char *level,
					     size_t len)
{
	struct topic_node *c;

	if (len > UINT_MAX)
		return NULL;
	HASH_FIND(hh, n->children, level, len, c);
	return c;
}

static struct topic_node *topic_node_child(const struct topic_node *n, const char *s,
					   size_t start, size_t end)
{
	switch (topic_level_kind(s, start, end)) {
	case TOPIC_PLUS:
		return n->plus;
	case TOPIC_HASH:
		return n->hash;
	default:
		return topic_node_literal(n, s + start, end - start);
	}
}

static struct topic_node *topic_node_add(struct topic_node *n, const char *s, size_t start,
					 size_t end)
{
	enum topic_kind kind = topic_level_kind(s, start, end);
	struct topic_node *c;

	c = topic_node_new(n, s + start, kind == TOPIC_LITERAL ? end - start : 0);
	if (!c)
		return NULL;
	if (kind == TOPIC_PLUS) {
		n->plus = c;
	} else if (kind == TOPIC_HASH) {
		n->hash = c;
	} else {
		HASH_ADD_KEYPTR(hh, n->children, c->level, c->len, c);
		if (!c->hh.tbl) { /* uthash ran out of memory and left the table as it was */
			free(c);
			return NULL;
		}
	}
	return c;
}

/* Frees n and its empty ancestors: a node lives only while something uses it. */
static void topic_prune(struct topic_trie *t, struct topic_node *n)
{
	while (n != t->root && topic_node_empty(n)) {
		struct topic_node *p = n->parent;

		topic_node_detach(n);
		free(n->subs);
		free(n);
		n = p;
	}
}

/* The node for filter, created on the way when create is set. */
static struct topic_node *topic_path(struct topic_trie *t, const char *f, size_t len,
				     bool create)
{
	struct topic_node *n = t->root;
	size_t off = 0;

	for (;;) {
		size_t end = topic_level_end(f, len, off);
		struct topic_node *c = topic_node_child(n, f, off, end);

		if (!c && create)
			c = topic_node_add(n, f, off, end);
		if (!c) {
			if (create)
				topic_prune(t, n);
			return NULL;
		}
		n = c;
		if (end == len)
			return n;
		off = end + 1;
	}
}

static int topic_subs_reserve(struct topic_node *n)
{
	struct topic_sub *subs;
	size_t cap;

	if (n->nsubs < n->cap)
		return 0;
	cap = n->cap ? n->cap * 2 : TOPIC_SUBS_MIN;
	if (cap < n->cap || cap > SIZE_MAX / sizeof(*subs))
		return -1;
	subs = realloc(n->subs, cap * sizeof(*subs));
	if (!subs)
		return -1;
	n->subs = subs;
	n->cap = cap;
	return 0;
}

/* Gives memory back after a burst of unsubscribes; failing to shrink is harmless. */
static void topic_subs_shrink(struct topic_node *n)
{
	struct topic_sub *subs;
	size_t cap = n->cap / 2;

	if (n->nsubs == 0) {
		free(n->subs);
		n->subs = NULL;
		n->cap = 0;
		return;
	}
	if (n->cap <= TOPIC_SUBS_MIN || n->nsubs > n->cap / 4)
		return;
	subs = realloc(n->subs, cap * sizeof(*subs));
	if (subs) {
		n->subs = subs;
		n->cap = cap;
	}
}

static struct topic_sub *topic_subs_find(const struct topic_node *n, const void *subscriber)
{
	for (size_t i = 0; i < n->nsubs; i++)
		if (n->subs[i].subscriber == subscriber)
			return &n->subs[i];
	return NULL;
}

struct topic_trie *topic_trie_new(void)
{
	struct topic_trie *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->root = topic_node_new(NULL, NULL, 0);
	if (!t->root)
		goto fail;
	return t;
fail:
	free(t);
	return NULL;
}

static struct topic_node *topic_node_first_child(const struct topic_node *n)
{
	if (n->children)
		return n->children;
	return n->plus ? n->plus : n->hash;
}

void topic_trie_free(struct topic_trie **tp)
{
	struct topic_node *n;

	if (!tp || !*tp)
		return;
	/* Post-order by parent pointers: each leaf is freed, then its parent revisited. */
	n = (*tp)->root;
	while (n) {
		struct topic_node *c = topic_node_first_child(n);
		struct topic_node *p = n->parent;

		if (c) {
			n = c;
			continue;
		}
		if (p)
			topic_node_detach(n);
		free(n->subs);
		free(n);
		n = p;
	}
	free(*tp);
	*tp = NULL;
}

/*
 * The filter must have passed topic_filter_valid: anything else is stored
 * level by level as it comes, and a '#' that is not last hides what follows.
 */
int topic_trie_subscribe(struct topic_trie *t, const char *filter, size_t len,
			 void *subscriber, uint8_t qos)
{
	struct topic_node *n;
	struct topic_sub *s;

	if (!t || !filter)
		return -1;
	n = topic_path(t, filter, len, true);
	if (!n)
		return -1;
	s = topic_subs_find(n, subscriber);
	if (s) {
		s->qos = qos;
		return 0;
	}
	if (topic_subs_reserve(n) < 0)
		goto fail;
	n->subs[n->nsubs].subscriber = subscriber;
	n->subs[n->nsubs].qos = qos;
	n->nsubs++;
	t->count++;
	return 1;
fail:
	topic_prune(t, n);
	return -1;
}

int topic_trie_unsubscribe(struct topic_trie *t, const char *filter, size_t len,
			   void *subscriber)
{
	struct topic_node *n;
	struct topic_sub *s;

	if (!t || !filter)
		return 0;
	n = topic_path(t, filter, len, false);
	if (!n)
		return 0;
	s = topic_subs_find(n, subscriber);
	if (!s)
		return 0;
	/* Order within a node means nothing, so the last entry fills the hole. */
	*s = n->subs[--n->nsubs];
	t->count--;
	topic_subs_shrink(n);
	topic_prune(t, n);
	return 1;
}

size_t topic_trie_count(const struct topic_trie *t)
{
	return t ? t->count : 0;
}

/* ---- matching ---- */

struct topic_walk {
	const struct topic_node *root;
	const char *topic;
	size_t len;
	bool dollar;
	topic_match_cb cb;
	void *arg;
};

static void topic_report(const struct topic_walk *w, const struct topic_node *n)
{
	const struct topic_sub *subs = n->subs;
	size_t count = n->nsubs;

	for (size_t i = 0; i < count; i++)
		w->cb(subs[i].subscriber, subs[i].qos, w->arg);
}

/* Wildcards below n apply, unless n is the root and the topic is a '$' one. */
static bool topic_walk_wild(const struct topic_walk *w, const struct topic_node *n)
{
	return !(w->dollar && n == w->root);
}

/*
 * Reports the filters that end at n for a topic whose levels before off
 * are consumed, and returns the first child to go down into (the literal
 * one before "+"), with *next set to the offset after that child's level.
 */
static const struct topic_node *topic_walk_enter(const struct topic_walk *w,
						 const struct topic_node *n, size_t off,
						 size_t *next)
{
	bool wild = topic_walk_wild(w, n);
	const struct topic_node *c;
	size_t end;

	if (off > w->len) {
		topic_report(w, n);
		if (wild && n->hash)
			topic_report(w, n->hash); /* "a/#" matches "a" */
		return NULL;
	}
	if (wild && n->hash)
		topic_report(w, n->hash);
	end = topic_level_end(w->topic, w->len, off);
	*next = end + 1;
	c = topic_node_literal(n, w->topic + off, end - off);
	if (c)
		return c;
	return wild ? n->plus : NULL;
}

/* After the subtree of c, its "+" sibling is still to do if c was literal. */
static const struct topic_node *topic_walk_sibling(const struct topic_walk *w,
						   const struct topic_node *c)
{
	const struct topic_node *p = c->parent;

	if (c == p->plus || !topic_walk_wild(w, p))
		return NULL;
	return p->plus;
}

void topic_trie_match(const struct topic_trie *t, const char *topic, size_t len,
		      topic_match_cb cb, void *arg)
{
	struct topic_walk w;
	const struct topic_node *n;
	size_t off = 0;

	if (!t || !topic || !cb)
		return;
	w = (struct topic_walk){
		.root = t->root, .topic = topic, .len = len,
		.dollar = len > 0 && topic[0] == '$', .cb = cb, .arg = arg,
	};
	/* Depth first; off is where the level below n starts, len + 1 past the end. */
	n = w.root;
	for (;;) {
		size_t next = 0;
		const struct topic_node *c = topic_walk_enter(&w, n, off, &next);

		if (c) {
			n = c;
			off = next;
			continue;
		}
		for (;;) {
			const struct topic_node *s;

			if (n == w.root)
				return;
			s = topic_walk_sibling(&w, n);
			if (s) {
				n = s; /* same level, so off stays */
				break;
			}
			off = topic_level_prev(topic, off);
			n = n->parent;
		}
	}
}
