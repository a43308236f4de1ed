/*
 * retain.h - the retained-message store, owned by the router.
 *
 * One message per topic, kept in a tree by topic level so that a
 * subscription with wildcards visits only the matching branches. Bounded by
 * a count and a byte budget (topic + payload + MQTT 5 properties bytes).
 * A message with an expiry is removed by retain_expire() once it passed;
 * until then a walk still reports it, and the caller looks at expires_at.
 */
#ifndef IOTD_RETAIN_H
#define IOTD_RETAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct retain_store;

/* max_count / max_bytes: 0 means no limit. */
struct retain_store *retain_new(size_t max_count, size_t max_bytes);
void retain_free(struct retain_store **rs);
/*
 * New limits (a reload). Nothing stored is evicted: past a lowered limit,
 * only new topics (and replacements that would grow the total) are refused.
 */
void retain_set_limits(struct retain_store *rs, size_t max_count, size_t max_bytes);

/* One retained message, as retain_put_msg() takes it and the walks report it. */
struct retained {
	const char *topic;
	size_t topic_len;
	const uint8_t *payload;
	size_t payload_len;
	const uint8_t *props;        /* its MQTT 5 property block (rec.h REC_PUB_PROPS); 0: none */
	uint32_t props_len;
	uint64_t expires_at;         /* its message expiry, ms since the epoch; 0: never */
	uint8_t qos;
};

enum retain_result {
	RETAIN_STORED = 0,     /* stored or replaced */
	RETAIN_CLEARED = 1,    /* empty payload: removed (or nothing to remove) */
	RETAIN_FULL = -1,      /* a new topic would pass max_count or max_bytes; nothing changed */
	RETAIN_NOMEM = -2,
};

/* Store, replace, or (payload_len 0) clear the retained message of a topic. */
int retain_put_msg(struct retain_store *rs, const struct retained *m);
/* The same for a message without properties or expiry. */
int retain_put(struct retain_store *rs, const char *topic, size_t topic_len,
	       const uint8_t *payload, size_t payload_len, uint8_t qos);

/* m and what it points to are valid during the call only. */
typedef void (*retain_cb)(const struct retained *m, void *arg);
/* Call cb for every retained message whose topic matches filter ($-rule included). */
void retain_match(const struct retain_store *rs, const char *filter, size_t filter_len,
		  retain_cb cb, void *arg);

/*
 * A walk over the messages matching one filter that can stop after any
 * message and resume later, while the store changes in between. It
 * reports, at most once each, the messages that were retained when it
 * started and still are when it reaches them: a topic stored or replaced
 * after the start is skipped (the caller's subscription got that message
 * live), one cleared or removed is not reported. Topics are visited in
 * the tree's order (per level, the order the levels first appeared).
 *
 * The fields are the walk's state, for retain.c alone. A started cursor
 * pins one node of the store: stop it (or let it finish) before
 * retain_free(). Memory held per cursor: the struct, nothing else.
 */
struct retain_node;
struct retain_cursor {
	const char *filter;          /* the caller's: must outlive the cursor */
	size_t len;
	struct retain_node *n;       /* where the walk stands (pinned); NULL once stopped */
	struct retain_node *top;     /* the "#" subtree being walked */
	size_t off;                  /* filter level below n */
	uint64_t since;              /* messages stored later are skipped */
	int step;
};

/* Start (or, after retain_cursor_stop, start again) a walk over filter. */
void retain_cursor_start(struct retain_store *rs, struct retain_cursor *c, const char *filter,
			 size_t len);
/* Abandon the walk; nothing to do for a finished or stopped one. */
void retain_cursor_stop(struct retain_store *rs, struct retain_cursor *c);
/* false: stop after this message (it counts as reported). Must not change the store. */
typedef bool (*retain_cursor_cb)(const struct retained *m, void *arg);
/*
 * Go on with the walk for at most *steps nodes (each node visited costs
 * one, whether it holds a message or not; *steps is lowered by what was
 * used) or until cb returns false. true when the walk is complete: the
 * cursor is then stopped.
 */
bool retain_cursor_next(struct retain_store *rs, struct retain_cursor *c, size_t *steps,
			retain_cursor_cb cb, void *arg);

/*
 * Remove the messages whose expiry is at or before now (ms since the
 * epoch), calling cb for each before it goes, visiting at most steps nodes
 * of the tree: a sweep that goes on from where the last call stopped (its
 * node pinned meanwhile) and starts over at the end. Costs nothing while
 * no message has an expiry. Returns how many it removed.
 */
size_t retain_expire(struct retain_store *rs, uint64_t now, size_t steps, retain_cb cb,
		     void *arg);

size_t retain_count(const struct retain_store *rs);
size_t retain_bytes(const struct retain_store *rs);

#endif
