/*
 * test_topic.c - unit tests for topic.h: name and filter validation,
 * topic_matches against the MQTT 3.1.1 section 4.7 examples, and the
 * subscription trie (subscribe, replace, unsubscribe, pruning, scale).
 *
 * The tests also check that unsubscribing gives all memory back and that
 * matching never allocates (bytes under ASan, blocks otherwise), and,
 * without ASan, that every allocation failure leaves the trie as it was.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "iotd.h"
#include "topic.h"

#include "failalloc.h"
#include "levels.h"

/* ---- helpers ---- */

#define SL(s) (s), strlen(s)

struct hit {
	void *sub;
	uint8_t qos;
};

struct hits {
	struct hit v[64];
	size_t n;      /* calls, even past the end of v */
};

static void collect(void *sub, uint8_t qos, void *arg)
{
	struct hits *h = arg;

	if (h->n < sizeof(h->v) / sizeof(h->v[0])) {
		h->v[h->n].sub = sub;
		h->v[h->n].qos = qos;
	}
	h->n++;
}

static struct hits match(const struct topic_trie *t, const char *topic, size_t len)
{
	struct hits h = { .n = 0 };

	topic_trie_match(t, topic, len, collect, &h);
	return h;
}

/* Calls reporting sub, and its QoS in *qos when exactly one. */
static size_t hits_for(const struct hits *h, void *sub, uint8_t *qos)
{
	size_t found = 0;

	for (size_t i = 0; i < h->n && i < sizeof(h->v) / sizeof(h->v[0]); i++) {
		if (h->v[i].sub != sub)
			continue;
		found++;
		if (qos)
			*qos = h->v[i].qos;
	}
	return found;
}

/* Matching topic calls back once for each of the n subscribers in subs, and for nothing else. */
static void assert_matches(const struct topic_trie *t, const char *topic, void *const *subs,
			   size_t n)
{
	struct hits h = match(t, SL(topic));

	if (h.n != n)
		fail_msg("%s: %zu calls, want %zu", topic, h.n, n);
	for (size_t i = 0; i < n; i++)
		if (hits_for(&h, subs[i], NULL) != 1)
			fail_msg("%s: subscriber %zu called back %zu times", topic, i,
				 hits_for(&h, subs[i], NULL));
}

/* ASSERT_MATCHES(t, topic, &sub, ...): assert_matches on the subscribers listed. */
#define ASSERT_MATCHES(t, topic, ...) \
	assert_matches(t, topic, (void *const[]){ __VA_ARGS__ }, \
		       ARRAY_SIZE(((void *const[]){ __VA_ARGS__ })))

static void count_cb(void *sub, uint8_t qos, void *arg)
{
	(*(size_t *)arg)++;
}

/* ---- validation ---- */

/* A string, as a topic name or as a filter, under those limits (0: none); valid or not. */
struct valid_case {
	enum valid_as { NAME, FILTER } as;
	const char *s;
	size_t max_levels, max_len;
	bool want;
};

static const struct valid_case valid_cases[] = {
	{ NAME, "a", 0, 0, true },
	{ NAME, "/", 0, 0, true },
	{ NAME, "//", 0, 0, true },
	{ NAME, "a//b", 0, 0, true },
	{ NAME, "/a", 0, 0, true },
	{ NAME, "a/", 0, 0, true },
	{ NAME, "sport/tennis/player1", 0, 0, true },
	{ NAME, "Accounts payable", 0, 0, true },
	{ NAME, "$SYS/monitor/Clients", 0, 0, true },
	{ NAME, "", 0, 0, false },
	{ NAME, "+", 0, 0, false },
	{ NAME, "#", 0, 0, false },
	{ NAME, "sport+", 0, 0, false },
	{ NAME, "sport/+/x", 0, 0, false },
	{ NAME, "sport/#", 0, 0, false },
	{ NAME, "a#b", 0, 0, false },
	{ NAME, "a/b/c", 3, 0, true },
	{ NAME, "a/b/c", 2, 0, false },
	{ NAME, "a/b/", 2, 0, false },
	{ NAME, "a/b/c", 0, 5, true },
	{ NAME, "a/b/c", 0, 4, false },
	{ NAME, "a/b/c", 3, 5, true },
	{ FILTER, "#", 0, 0, true },
	{ FILTER, "+", 0, 0, true },
	{ FILTER, "/", 0, 0, true },
	{ FILTER, "a//b", 0, 0, true },
	{ FILTER, "sport/tennis/#", 0, 0, true },
	{ FILTER, "sport/tennis/player1/#", 0, 0, true },
	{ FILTER, "sport/+/player1", 0, 0, true },
	{ FILTER, "+/tennis/#", 0, 0, true },
	{ FILTER, "+/+", 0, 0, true },
	{ FILTER, "/+", 0, 0, true },
	{ FILTER, "+/", 0, 0, true },   /* '+' fills level one; level two is empty */
	{ FILTER, "/#", 0, 0, true },
	{ FILTER, "+/#", 0, 0, true },
	{ FILTER, "$SYS/#", 0, 0, true },
	{ FILTER, "sport/+", 0, 0, true },
	{ FILTER, "", 0, 0, false },
	{ FILTER, "sport+", 0, 0, false },
	{ FILTER, "sport/tennis#", 0, 0, false },
	{ FILTER, "sport/tennis/#/ranking", 0, 0, false },
	{ FILTER, "sport/#/x", 0, 0, false },
	{ FILTER, "#/", 0, 0, false },
	{ FILTER, "#/#", 0, 0, false },
	{ FILTER, "a/+b", 0, 0, false },
	{ FILTER, "a+/b", 0, 0, false },
	{ FILTER, "++", 0, 0, false },
	{ FILTER, "+#", 0, 0, false },
	{ FILTER, "##", 0, 0, false },
	{ FILTER, "a#", 0, 0, false },
	{ FILTER, "#a", 0, 0, false },
	{ FILTER, "+/+/+", 3, 0, true },
	{ FILTER, "+/+/+", 2, 0, false },
	{ FILTER, "a/#", 0, 3, true },
	{ FILTER, "a/#", 0, 2, false },
};

/* Every case of valid_cases taken as `as` through fn; each wrong answer printed. */
static int check_valid_cases(const char *what, enum valid_as as,
			     bool (*fn)(const char *, size_t, size_t, size_t))
{
	int failures = 0;

	for (size_t i = 0; i < ARRAY_SIZE(valid_cases); i++) {
		const struct valid_case *c = &valid_cases[i];
		bool got;

		if (c->as != as)
			continue;
		got = fn(c->s, strlen(c->s), c->max_levels, c->max_len);
		if (got != c->want) {
			print_error("%s(\"%s\", levels %zu, len %zu): got %d, want %d\n", what,
				    c->s, c->max_levels, c->max_len, got, c->want);
			failures++;
		}
	}
	return failures;
}

static void test_topic_name_validity_table(void **state)
{
	assert_int_equal(check_valid_cases("topic_name_valid", NAME, topic_name_valid), 0);
}

static void test_topic_filter_validity_table(void **state)
{
	assert_int_equal(check_valid_cases("topic_filter_valid", FILTER, topic_filter_valid), 0);
}

static void test_validators_use_length_not_nul(void **state)
{
	static const char name[] = "a/b+";
	static const char filter[] = "sport/#x";
	static const char nul[] = { 'a', '\0', 'b' };

	assert_true(topic_name_valid(name, 3, 0, 0));
	assert_false(topic_name_valid(name, 4, 0, 0));
	assert_true(topic_filter_valid(filter, 7, 0, 0));
	assert_false(topic_filter_valid(filter, 8, 0, 0));
	assert_true(topic_name_valid(nul, sizeof(nul), 0, 0));
	assert_false(topic_name_valid(NULL, 0, 0, 0));
	assert_false(topic_filter_valid(NULL, 0, 0, 0));
}

/* ---- shared subscriptions' filters: "$share/{name}/{filter}" ---- */

static void test_share_filter_parse(void **state)
{
	static const struct {
		const char *f;
		enum topic_share want;
		const char *name, *filter;   /* for TOPIC_SHARE_OK */
	} cases[] = {
		{ "$share/g/a/b", TOPIC_SHARE_OK, "g", "a/b" },
		{ "$share/group1/#", TOPIC_SHARE_OK, "group1", "#" },
		{ "$share/g/+/x/#", TOPIC_SHARE_OK, "g", "+/x/#" },
		{ "$share/g/$SYS/x", TOPIC_SHARE_OK, "g", "$SYS/x" },
		{ "$share/g//", TOPIC_SHARE_OK, "g", "/" },
		{ "$share/g", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/g/", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share//a", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/g+/a", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/+/a", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/#/a", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/g/a#", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share/g/a/+b", TOPIC_SHARE_BAD, NULL, NULL },
		{ "$share", TOPIC_SHARE_NONE, NULL, NULL },
		{ "$sharex/g/a", TOPIC_SHARE_NONE, NULL, NULL },
		{ "$SHARE/g/a", TOPIC_SHARE_NONE, NULL, NULL },
		{ "a/$share/g/a", TOPIC_SHARE_NONE, NULL, NULL },
		{ "#", TOPIC_SHARE_NONE, NULL, NULL },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct topic_share_parts p = { 0 };
		enum topic_share got = topic_share_parse(cases[i].f, strlen(cases[i].f), &p);

		if (got != cases[i].want)
			print_error("topic_share_parse(\"%s\"): got %d, want %d\n", cases[i].f, got,
				    cases[i].want);
		assert_int_equal(got, cases[i].want);
		if (got != TOPIC_SHARE_OK)
			continue;
		assert_int_equal(p.name_len, strlen(cases[i].name));
		assert_memory_equal(p.name, cases[i].name, p.name_len);
		assert_int_equal(p.filter_len, strlen(cases[i].filter));
		assert_memory_equal(p.filter, cases[i].filter, p.filter_len);
	}
	/* The length, not a NUL, ends the filter. */
	assert_int_equal(topic_share_parse("$share/g/ab", 9, &(struct topic_share_parts){ 0 }),
			 TOPIC_SHARE_BAD);
	assert_int_equal(topic_share_parse(NULL, 0, &(struct topic_share_parts){ 0 }),
			 TOPIC_SHARE_NONE);
}

/* ---- matching: MQTT 3.1.1 section 4.7 examples and edge cases ---- */

struct match_case {
	const char *filter, *topic;
	bool want;
};

static const struct match_case match_cases[] = {
	/* 4.7.1.2 multi-level wildcard */
	{ "sport/tennis/player1/#", "sport/tennis/player1", true },
	{ "sport/tennis/player1/#", "sport/tennis/player1/ranking", true },
	{ "sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true },
	{ "sport/#", "sport", true },
	{ "sport/#", "sport/tennis/player1", true },
	{ "sport/tennis/#", "sport/tennis", true },
	{ "sport/tennis/#", "sport/tennisX", false },
	{ "#", "sport", true },
	{ "#", "sport/tennis/player1", true },
	{ "#", "/", true },
	{ "#", "/finance", true },
	/* 4.7.1.3 single-level wildcard */
	{ "sport/tennis/+", "sport/tennis/player1", true },
	{ "sport/tennis/+", "sport/tennis/player2", true },
	{ "sport/tennis/+", "sport/tennis/player1/ranking", false },
	{ "sport/+", "sport", false },
	{ "sport/+", "sport/", true },
	{ "+", "finance", true },
	{ "+", "a/b", false },
	{ "+/+", "/finance", true },
	{ "/+", "/finance", true },
	{ "+", "/finance", false },
	{ "+/tennis/#", "sport/tennis/player1", true },
	{ "+/tennis/#", "sport/tennis", true },
	{ "+/tennis/#", "sport/golf", false },
	{ "sport/+/player1", "sport/tennis/player1", true },
	{ "sport/+/player1", "sport/tennis/player2", false },
	{ "+/+", "a", false },
	{ "+/+/+", "a/b", false },
	{ "a/+/b", "a//b", true },
	{ "+/", "a/", true },
	{ "+/", "a", false },
	/* 4.7.2 topics beginning with $ */
	{ "#", "$SYS", false },
	{ "#", "$SYS/monitor/Clients", false },
	{ "+", "$SYS", false },
	{ "+/monitor/Clients", "$SYS/monitor/Clients", false },
	{ "$SYS/#", "$SYS/monitor/Clients", true },
	{ "$SYS/#", "$SYS", true },
	{ "$SYS/monitor/+", "$SYS/monitor/Clients", true },
	{ "+/+", "a/$b", true },  /* only the first level is protected */
	{ "#", "a$", true },
	/* 4.7.3 topic semantics */
	{ "ACCOUNTS", "Accounts", false },
	{ "Accounts", "Accounts", true },
	{ "Accounts payable", "Accounts payable", true },
	{ "/finance", "finance", false },
	{ "finance", "/finance", false },
	{ "/", "/", true },
	{ "a/b", "a/b", true },
	{ "a/b", "a/b/c", false },
	{ "a/b/c", "a/b", false },
	{ "a/b", "a/", false },
	{ "a//b", "a//b", true },
	{ "a/#", "a/", true },
	{ "a/#", "ab", false },
};

static void test_topic_matches_spec_examples(void **state)
{
	int failures = 0;

	for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
		const struct match_case *c = &match_cases[i];
		bool got = topic_matches(SL(c->filter), SL(c->topic));

		assert_true(topic_filter_valid(SL(c->filter), 0, 0));
		assert_true(topic_name_valid(SL(c->topic), 0, 0));
		if (got != c->want) {
			print_error("topic_matches(\"%s\", \"%s\"): got %d, want %d\n",
				    c->filter, c->topic, got, c->want);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void test_trie_match_agrees_with_spec_examples(void **state)
{
	int failures = 0;
	int sub;

	for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
		const struct match_case *c = &match_cases[i];
		struct topic_trie *t = topic_trie_new();
		struct hits h;

		assert_non_null(t);
		assert_int_equal(topic_trie_subscribe(t, SL(c->filter), &sub, 1), 1);
		h = match(t, SL(c->topic));
		if (h.n != (c->want ? 1u : 0u)) {
			print_error("trie \"%s\" vs \"%s\": got %zu calls, want %d\n",
				    c->filter, c->topic, h.n, c->want);
			failures++;
		}
		topic_trie_free(&t);
	}
	assert_int_equal(failures, 0);
}

static void test_plus_does_not_match_two_levels(void **state)
{
	assert_false(topic_matches(SL("+"), SL("a/b")));
	assert_false(topic_matches(SL("a/+"), SL("a/b/c")));
	assert_true(topic_matches(SL("a/+"), SL("a/b")));
}

static void test_hash_matches_parent_level(void **state)
{
	assert_true(topic_matches(SL("sport/#"), SL("sport")));
	assert_true(topic_matches(SL("a/b/#"), SL("a/b")));
	assert_false(topic_matches(SL("a/b/#"), SL("a")));
}

static void test_dollar_topics_skip_first_level_wildcards(void **state)
{
	struct topic_trie *t = topic_trie_new();
	int all, plus, sys, sys_plus;

	assert_non_null(t);
	assert_int_equal(topic_trie_subscribe(t, SL("#"), &all, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("+/monitor/Clients"), &plus, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("$SYS/#"), &sys, 1), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("$SYS/monitor/+"), &sys_plus, 2), 1);

	ASSERT_MATCHES(t, "$SYS/monitor/Clients", &sys, &sys_plus);
	ASSERT_MATCHES(t, "x/monitor/Clients", &all, &plus);
	topic_trie_free(&t);
}

static void test_matching_uses_length_not_nul(void **state)
{
	static const char filter[] = "a/+xyz";
	static const char topic[] = "a/bc/d";

	assert_true(topic_matches(filter, 3, topic, 4));
	assert_false(topic_matches(filter, 3, topic, 6));
}

/* ---- the trie ---- */

static void test_trie_free_accepts_null_and_clears_pointer(void **state)
{
	struct topic_trie *t = NULL;

	topic_trie_free(NULL);
	topic_trie_free(&t);
	t = topic_trie_new();
	assert_non_null(t);
	topic_trie_free(&t);
	assert_null(t);
}

static void test_subscribe_new_filter_returns_1_and_counts(void **state)
{
	struct topic_trie *t = topic_trie_new();
	int a, b;

	assert_non_null(t);
	assert_int_equal(topic_trie_count(t), 0);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &a, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &b, 1), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/+"), &a, 2), 1);
	assert_int_equal(topic_trie_count(t), 3);
	assert_int_equal(topic_trie_count(NULL), 0);
	topic_trie_free(&t);
}

static void test_subscribe_existing_pair_replaces_qos(void **state)
{
	struct topic_trie *t = topic_trie_new();
	struct hits h;
	uint8_t qos = 9;
	int a;

	assert_non_null(t);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &a, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &a, 2), 0);
	assert_int_equal(topic_trie_count(t), 1);
	h = match(t, SL("a/b"));
	assert_int_equal(hits_for(&h, &a, &qos), 1);
	assert_int_equal(qos, 2);
	topic_trie_free(&t);
}

static void test_unsubscribe_unknown_returns_0(void **state)
{
	struct topic_trie *t = topic_trie_new();
	int a, b;

	assert_non_null(t);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b"), &a), 0);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &a, 1), 1);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b"), &b), 0);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a"), &a), 0);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/+"), &a), 0);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b/c"), &a), 0);
	assert_int_equal(topic_trie_count(t), 1);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b"), &a), 1);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b"), &a), 0);
	assert_int_equal(topic_trie_count(t), 0);
	topic_trie_free(&t);
}

static void test_unsubscribe_leaves_other_filters_working(void **state)
{
	struct topic_trie *t = topic_trie_new();
	int a, b;
	struct hits h;

	assert_non_null(t);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b/c"), &a, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &b, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b/#"), &b, 1), 1);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b/c"), &a), 1);
	ASSERT_MATCHES(t, "a/b/c", &b);
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b"), &b), 1);
	h = match(t, SL("a/b"));
	assert_int_equal(h.n, 1); /* a/b/# still matches its parent */
	assert_int_equal(topic_trie_unsubscribe(t, SL("a/b/#"), &b), 1);
	h = match(t, SL("a/b"));
	assert_int_equal(h.n, 0);
	assert_int_equal(topic_trie_count(t), 0);
	topic_trie_free(&t);
}

static const char *const prune_filters[] = {
	"a/b/c/d", "a/b/c", "a/+/c", "a/#", "#", "+", "/", "a//b", "+/+/#", "$SYS/x",
	"long/path/that/nobody/else/shares",
};

static void subscribe_all(struct topic_trie *t, void *sub)
{
	for (size_t i = 0; i < sizeof(prune_filters) / sizeof(prune_filters[0]); i++)
		assert_int_equal(topic_trie_subscribe(t, SL(prune_filters[i]), sub, 1), 1);
}

static void unsubscribe_all(struct topic_trie *t, void *sub)
{
	for (size_t i = 0; i < sizeof(prune_filters) / sizeof(prune_filters[0]); i++)
		assert_int_equal(topic_trie_unsubscribe(t, SL(prune_filters[i]), sub), 1);
}

static void test_unsubscribe_prunes_back_to_empty(void **state)
{
	struct topic_trie *t = topic_trie_new();
	int a, b;
	struct hits h;

	assert_non_null(t);
	subscribe_all(t, &a);
	subscribe_all(t, &b);
	unsubscribe_all(t, &a);
	assert_int_equal(topic_trie_count(t), sizeof(prune_filters) / sizeof(prune_filters[0]));
	unsubscribe_all(t, &b);
	assert_int_equal(topic_trie_count(t), 0);
	h = match(t, SL("a/b/c/d"));
	assert_int_equal(h.n, 0);
	/* Pruned paths come back cleanly. */
	subscribe_all(t, &a);
	h = match(t, SL("a/b/c/d"));
	assert_int_equal(h.n, 4); /* a/b/c/d, a/#, #, +/+/# */
	topic_trie_free(&t);
}

static void test_unsubscribe_gives_memory_back(void **state)
{
	struct topic_trie *t = topic_trie_new();
	size_t before, peak;
	void *subs[40];

	assert_non_null(t);
	before = test_live_memory();
	for (size_t i = 0; i < 40; i++)
		subscribe_all(t, &subs[i]);
	peak = test_live_memory();
	assert_true(peak > before);
	for (size_t i = 0; i < 40; i++)
		unsubscribe_all(t, &subs[(i * 7) % 40]);
	assert_int_equal(topic_trie_count(t), 0);
	assert_int_equal(test_live_memory(), before);

	/* A node kept alive by a deeper filter still drops its subscriber array. */
	assert_int_equal(topic_trie_subscribe(t, SL("a/b/c/d"), &subs[0], 0), 1);
	before = test_live_memory();
	for (size_t i = 0; i < 40; i++)
		assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &subs[i], 0), 1);
	for (size_t i = 0; i < 40; i++)
		assert_int_equal(topic_trie_unsubscribe(t, SL("a/b"), &subs[i]), 1);
	assert_int_equal(test_live_memory(), before);
	topic_trie_free(&t);
}

static void test_overlapping_filters_reported_once_each(void **state)
{
	static const struct {
		const char *filter;
		uint8_t qos;
	} subs[] = {
		{ "a/b", 0 }, { "a/+", 1 }, { "a/#", 2 }, { "#", 1 }, { "+/b", 0 }, { "+/+", 2 },
		{ "+/#", 1 }, { "a/b/#", 0 },
	};
	struct topic_trie *t = topic_trie_new();
	unsigned qos_seen[3] = { 0 };
	struct hits h;
	int a, other;

	assert_non_null(t);
	for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
		assert_int_equal(topic_trie_subscribe(t, SL(subs[i].filter), &a, subs[i].qos), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/c"), &other, 0), 1);
	h = match(t, SL("a/b"));
	assert_int_equal(h.n, sizeof(subs) / sizeof(subs[0]));
	for (size_t i = 0; i < h.n; i++) {
		assert_ptr_equal(h.v[i].sub, &a);
		qos_seen[h.v[i].qos]++;
	}
	assert_int_equal(qos_seen[0], 3);
	assert_int_equal(qos_seen[1], 3);
	assert_int_equal(qos_seen[2], 2);
	topic_trie_free(&t);
}

struct seen {
	const char *base;
	unsigned char marks[950];
	size_t calls;
};

static void mark_seen(void *sub, uint8_t qos, void *arg)
{
	struct seen *s = arg;

	s->marks[(const char *)sub - s->base]++;
	s->calls++;
}

static void test_match_reports_all_950_subscribers_of_one_filter(void **state)
{
	enum { N = 950 };
	static char subs[N];
	struct topic_trie *t = topic_trie_new();
	struct seen seen = { .base = subs };

	assert_non_null(t);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(topic_trie_subscribe(t, SL("fleet/+/telemetry"), &subs[i], 1), 1);
	topic_trie_match(t, SL("fleet/truck7/telemetry"), mark_seen, &seen);
	assert_int_equal(seen.calls, N);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(seen.marks[i], 1);
	/* Remove every other one: the rest are still there exactly once. */
	for (size_t i = 0; i < N; i += 2)
		assert_int_equal(topic_trie_unsubscribe(t, SL("fleet/+/telemetry"), &subs[i]), 1);
	memset(&seen, 0, sizeof(seen));
	seen.base = subs;
	topic_trie_match(t, SL("fleet/truck7/telemetry"), mark_seen, &seen);
	assert_int_equal(seen.calls, N / 2);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(seen.marks[i], i % 2);
	assert_int_equal(topic_trie_count(t), N / 2);
	topic_trie_free(&t);
}

static void test_match_does_not_allocate(void **state)
{
	struct topic_trie *t = topic_trie_new();
	static char subs[100];
	size_t calls = 0, mallocs;

	assert_non_null(t);
	for (size_t i = 0; i < 100; i++) {
		assert_int_equal(topic_trie_subscribe(t, SL("a/+/c/#"), &subs[i], 0), 1);
		assert_int_equal(topic_trie_subscribe(t, SL("+/b/+"), &subs[i], 0), 1);
	}
	mallocs = test_mallocs;
	topic_trie_match(t, SL("a/b/c/d/e"), count_cb, &calls);
	topic_trie_match(t, SL("a/b/c"), count_cb, &calls);
	assert_int_equal(test_mallocs, mallocs);
	assert_int_equal(calls, 300);
	topic_trie_free(&t);
}

static void test_ten_thousand_level_topic(void **state)
{
	enum { LEVELS = 10000 };
	struct topic_trie *t = topic_trie_new();
	size_t tlen, exact_len, plus_len, plus_hash_len, too_deep_len, deep_hash_len;
	char *topic = repeat_levels("l", LEVELS, NULL, &tlen);
	char *exact = repeat_levels("l", LEVELS, NULL, &exact_len);
	char *plus = repeat_levels("+", LEVELS, NULL, &plus_len);
	char *plus_hash = repeat_levels("+", LEVELS - 1, "#", &plus_hash_len);
	char *too_deep = repeat_levels("+", LEVELS + 1, NULL, &too_deep_len);
	char *deep_hash = repeat_levels("l", LEVELS, "#", &deep_hash_len);
	int a, b, c, d, e, f;
	struct hits h;

	assert_non_null(t);
	assert_true(topic_name_valid(topic, tlen, 0, 0));
	assert_true(topic_name_valid(topic, tlen, LEVELS, 0));
	assert_false(topic_name_valid(topic, tlen, LEVELS - 1, 0));
	assert_true(topic_filter_valid(plus_hash, plus_hash_len, LEVELS, 0));
	assert_true(topic_matches(plus, plus_len, topic, tlen));
	assert_true(topic_matches(plus_hash, plus_hash_len, topic, tlen));
	assert_false(topic_matches(too_deep, too_deep_len, topic, tlen));

	assert_int_equal(topic_trie_subscribe(t, exact, exact_len, &a, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, plus, plus_len, &b, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, plus_hash, plus_hash_len, &c, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, too_deep, too_deep_len, &d, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, deep_hash, deep_hash_len, &e, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("l/#"), &f, 0), 1);
	h = match(t, topic, tlen);
	assert_int_equal(h.n, 5);
	assert_int_equal(hits_for(&h, &d, NULL), 0);

	/* Drop one: the rest of the deep path must survive. */
	assert_int_equal(topic_trie_unsubscribe(t, plus, plus_len, &b), 1);
	h = match(t, topic, tlen);
	assert_int_equal(h.n, 4);
	assert_int_equal(topic_trie_unsubscribe(t, exact, exact_len, &a), 1);
	assert_int_equal(topic_trie_count(t), 4);
	topic_trie_free(&t); /* deep paths are freed without recursion too */
	free(topic);
	free(exact);
	free(plus);
	free(plus_hash);
	free(too_deep);
	free(deep_hash);
}

static void test_hundred_thousand_sibling_topics(void **state)
{
	enum { N = 100000 };
	struct topic_trie *t = topic_trie_new();
	char buf[32];
	size_t calls = 0;
	struct hits h;
	int wild;

	assert_non_null(t);
	/* Subscribers are stand-in pointers; the trie never dereferences them. */
	for (uintptr_t i = 0; i < N; i++) {
		int n = snprintf(buf, sizeof(buf), "dev/%lu/state", (unsigned long)i);

		assert_int_equal(topic_trie_subscribe(t, buf, (size_t)n, (void *)(i + 1), 0), 1);
	}
	assert_int_equal(topic_trie_count(t), N);
	for (uintptr_t i = 0; i < N; i += 7) {
		int n = snprintf(buf, sizeof(buf), "dev/%lu/state", (unsigned long)i);

		h = match(t, buf, (size_t)n);
		assert_int_equal(h.n, 1);
		assert_ptr_equal(h.v[0].sub, (void *)(i + 1));
	}
	h = match(t, SL("dev/100000/state"));
	assert_int_equal(h.n, 0);
	assert_int_equal(topic_trie_subscribe(t, SL("dev/+/state"), &wild, 0), 1);
	topic_trie_match(t, SL("dev/99999/state"), count_cb, &calls);
	assert_int_equal(calls, 2);
	for (uintptr_t i = 0; i < N; i++) {
		int n = snprintf(buf, sizeof(buf), "dev/%lu/state", (unsigned long)i);

		assert_int_equal(topic_trie_unsubscribe(t, buf, (size_t)n, (void *)(i + 1)), 1);
	}
	assert_int_equal(topic_trie_count(t), 1);
	topic_trie_free(&t);
}

static void test_empty_levels_are_distinct(void **state)
{
	struct topic_trie *t = topic_trie_new();
	int a, b, c;

	assert_non_null(t);
	assert_int_equal(topic_trie_subscribe(t, SL("/"), &a, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a//b"), &b, 0), 1);
	assert_int_equal(topic_trie_subscribe(t, SL("a/b"), &c, 0), 1);
	ASSERT_MATCHES(t, "/", &a);
	ASSERT_MATCHES(t, "a//b", &b);
	ASSERT_MATCHES(t, "a/b", &c);
	topic_trie_free(&t);
}

/* ---- out of memory (without ASan, which owns malloc itself) ---- */

#ifndef TEST_ASAN
/* Subscribes, failing each allocation in turn until it goes through. */
static int subscribe_despite_failures(struct topic_trie *t, const char *filter, void *sub,
				      uint8_t qos)
{
	for (long k = 0;; k++) {
		size_t live = test_live_memory(), count = topic_trie_count(t);
		int rc;

		WITH_ALLOC_FAILING(k, rc = topic_trie_subscribe(t, SL(filter), sub, qos));
		if (rc != -1)
			return rc;
		assert_int_equal(test_live_memory(), live);
		assert_int_equal(topic_trie_count(t), count);
	}
}
#endif

static void test_trie_new_without_memory_returns_null(void **state)
{
#ifndef TEST_ASAN
	assert_null_without_memory(2, topic_trie_new());
#else
	skip();
#endif
}

static void test_subscribe_without_memory_changes_nothing(void **state)
{
#ifndef TEST_ASAN
	static char subs[8];
	struct topic_trie *t = topic_trie_new();
	char buf[32];
	struct hits h;

	assert_non_null(t);
	assert_int_equal(subscribe_despite_failures(t, "a/b/c/d", &subs[0], 0), 1);
	assert_int_equal(subscribe_despite_failures(t, "a/+/c/#", &subs[0], 1), 1);
	assert_int_equal(subscribe_despite_failures(t, "a/b/c/d", &subs[0], 2), 0);
	for (size_t i = 1; i < 8; i++) /* grows the subscriber array */
		assert_int_equal(subscribe_despite_failures(t, "a/b/c/d", &subs[i], 0), 1);
	/* Enough siblings for uthash to grow its bucket array at some point. */
	for (int i = 0; i < 1000; i++) {
		snprintf(buf, sizeof(buf), "s/%d", i);
		assert_int_equal(subscribe_despite_failures(t, buf, &subs[0], 0), 1);
	}
	assert_int_equal(topic_trie_count(t), 1009);
	h = match(t, SL("a/b/c/d"));
	assert_int_equal(h.n, 9);
	h = match(t, SL("s/999"));
	assert_int_equal(h.n, 1);
	for (int i = 0; i < 1000; i++) {
		snprintf(buf, sizeof(buf), "s/%d", i);
		assert_int_equal(topic_trie_unsubscribe(t, SL(buf), &subs[0]), 1);
	}
	topic_trie_free(&t);
#else
	skip();
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_topic_name_validity_table),
		cmocka_unit_test(test_topic_filter_validity_table),
		cmocka_unit_test(test_validators_use_length_not_nul),
		cmocka_unit_test(test_share_filter_parse),
		cmocka_unit_test(test_topic_matches_spec_examples),
		cmocka_unit_test(test_trie_match_agrees_with_spec_examples),
		cmocka_unit_test(test_plus_does_not_match_two_levels),
		cmocka_unit_test(test_hash_matches_parent_level),
		cmocka_unit_test(test_dollar_topics_skip_first_level_wildcards),
		cmocka_unit_test(test_matching_uses_length_not_nul),
		cmocka_unit_test(test_trie_free_accepts_null_and_clears_pointer),
		cmocka_unit_test(test_subscribe_new_filter_returns_1_and_counts),
		cmocka_unit_test(test_subscribe_existing_pair_replaces_qos),
		cmocka_unit_test(test_unsubscribe_unknown_returns_0),
		cmocka_unit_test(test_unsubscribe_leaves_other_filters_working),
		cmocka_unit_test(test_unsubscribe_prunes_back_to_empty),
		cmocka_unit_test(test_unsubscribe_gives_memory_back),
		cmocka_unit_test(test_overlapping_filters_reported_once_each),
		cmocka_unit_test(test_match_reports_all_950_subscribers_of_one_filter),
		cmocka_unit_test(test_match_does_not_allocate),
		cmocka_unit_test(test_ten_thousand_level_topic),
		cmocka_unit_test(test_hundred_thousand_sibling_topics),
		cmocka_unit_test(test_empty_levels_are_distinct),
		cmocka_unit_test(test_trie_new_without_memory_returns_null),
		cmocka_unit_test(test_subscribe_without_memory_changes_nothing),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
