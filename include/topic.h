/*
 * topic.h - topic names, topic filters, and the subscription trie.
 *
 * The trie is owned by the router alone: one level per node, '+' and '#'
 * as ordinary children with special meaning at match time, topics that
 * start with '$' never matched by a wildcard in the first level
 * [MQTT-4.7.2-1]. Subscribers are opaque pointers (the router's sessions);
 * one subscriber has at most one QoS per filter.
 */
#ifndef IOTD_TOPIC_H
#define IOTD_TOPIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * A topic name for PUBLISH: 1..max_len bytes, no '+' or '#', at most
 * max_levels levels (0: no limit for either). UTF-8 is the codec's job.
 */
bool topic_name_valid(const char *t, size_t len, size_t max_levels, size_t max_len);
/* A filter for SUBSCRIBE/UNSUBSCRIBE: '+' alone in its level, '#' alone and last. */
bool topic_filter_valid(const char *f, size_t len, size_t max_levels, size_t max_len);
/*
 * A shared subscription's filter, "$share/{name}/{filter}" (OASIS MQTT
 * 5.0, 4.8.2): name one level or more characters without '/', '+' or
 * '#', filter a valid filter. TOPIC_SHARE_NONE: not shared (a plain
 * filter, checked as such); TOPIC_SHARE_BAD: shared but malformed; for
 * TOPIC_SHARE_OK, *p points into f at its name and its filter.
 */
enum topic_share { TOPIC_SHARE_NONE, TOPIC_SHARE_OK, TOPIC_SHARE_BAD };
#define TOPIC_SHARE_PREFIX "$share/"
#define TOPIC_SHARE_PREFIX_LEN (sizeof(TOPIC_SHARE_PREFIX) - 1)
struct topic_share_parts {
	const char *name, *filter;
	size_t name_len, filter_len;
};
enum topic_share topic_share_parse(const char *f, size_t len, struct topic_share_parts *p);
/* Does filter match topic? Both assumed valid. */
bool topic_matches(const char *filter, size_t flen, const char *topic, size_t tlen);

/*
 * Level walking, shared by the trie and the retained store. Offsets index
 * the topic or filter; len + 1 means "past the last level".
 */
enum topic_kind { TOPIC_LITERAL, TOPIC_PLUS, TOPIC_HASH };

/* Index of the '/' that ends the level starting at off, or len. */
static inline size_t topic_level_end(const char *s, size_t len, size_t off)
{
	const char *slash;

	if (off >= len)
		return len;
	slash = memchr(s + off, '/', len - off);
	return slash ? (size_t)(slash - s) : len;
}

/*
 * Start of the level before the one starting at off (off > 0). Offsets of
 * len + 1 mean "past the last level", so s[off - 1] is always the '/' that
 * ended the previous level, or its end of string.
 */
static inline size_t topic_level_prev(const char *s, size_t off)
{
	size_t i = off - 1;

	while (i > 0 && s[i - 1] != '/')
		i--;
	return i;
}

static inline enum topic_kind topic_level_kind(const char *s, size_t start, size_t end)
{
	if (end - start != 1)
		return TOPIC_LITERAL;
	if (s[start] == '+')
		return TOPIC_PLUS;
	if (s[start] == '#')
		return TOPIC_HASH;
	return TOPIC_LITERAL;
}

struct topic_trie;

struct topic_trie *topic_trie_new(void);
/* Frees the trie and sets *t to NULL; NULL is fine. Subscribers are not freed. */
void topic_trie_free(struct topic_trie **t);

/* Returns 1 when added, 0 when the subscriber's QoS for this filter was replaced, -1 on ENOMEM. */
int topic_trie_subscribe(struct topic_trie *t, const char *filter, size_t len,
			 void *subscriber, uint8_t qos);
/* Returns 1 when removed, 0 when the subscriber had no such filter. Empty nodes are pruned. */
int topic_trie_unsubscribe(struct topic_trie *t, const char *filter, size_t len,
			   void *subscriber);

/*
 * Call cb once per (matching filter, subscriber): a subscriber with two
 * overlapping filters is reported twice, each with its own QoS; the router
 * folds them into one delivery at the highest QoS [MQTT-3.3.5-1].
 */
typedef void (*topic_match_cb)(void *subscriber, uint8_t qos, void *arg);
void topic_trie_match(const struct topic_trie *t, const char *topic, size_t len,
		      topic_match_cb cb, void *arg);

/* Number of (filter, subscriber) entries, for stats and tests. */
size_t topic_trie_count(const struct topic_trie *t);

#endif
