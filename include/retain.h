/*
 * retain.h - the retained-message store, owned by the router.
 *
 * One message per topic, kept in a tree by topic level so that a
 * subscription with wildcards visits only the matching branches. Bounded by
 * a count and a byte budget (topic + payload bytes).
 */
#ifndef IOTD_RETAIN_H
#define IOTD_RETAIN_H

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

enum retain_result {
	RETAIN_STORED = 0,     /* stored or replaced */
	RETAIN_CLEARED = 1,    /* empty payload: removed (or nothing to remove) */
	RETAIN_FULL = -1,      /* a new topic would pass max_count or max_bytes; nothing changed */
	RETAIN_NOMEM = -2,
};

/* Store, replace, or (payload_len 0) clear the retained message of a topic. */
int retain_put(struct retain_store *rs, const char *topic, size_t topic_len,
	       const uint8_t *payload, size_t payload_len, uint8_t qos);

typedef void (*retain_cb)(const char *topic, size_t topic_len, const uint8_t *payload,
			  size_t payload_len, uint8_t qos, void *arg);
/* Call cb for every retained message whose topic matches filter ($-rule included). */
void retain_match(const struct retain_store *rs, const char *filter, size_t filter_len,
		  retain_cb cb, void *arg);

size_t retain_count(const struct retain_store *rs);
size_t retain_bytes(const struct retain_store *rs);

#endif
