/*
 * test_retain.c - unit tests for retain.h: store, replace, clear, the
 * count and byte limits, and wildcard lookups with the '$' rule.
 *
 * The tests also check that clearing gives all memory back (bytes under
 * ASan, blocks otherwise) and, without ASan, that every allocation failure
 * leaves the store as it was.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "retain.h"
#include "topic.h"

#include "failalloc.h"
#include "levels.h"

/* ---- helpers ---- */

#define SL(s) (s), strlen(s)
#define MAX_GOT 32

struct got {
	char topic[MAX_GOT][64];
	char payload[MAX_GOT][64];
	uint8_t qos[MAX_GOT];
	size_t n;      /* calls, even past MAX_GOT */
};

static void copy_str(char *dst, size_t cap, const void *src, size_t len)
{
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, src, len);
	dst[len] = '\0';
}

static void collect(const struct retained *m, void *arg)
{
	struct got *g = arg;

	if (g->n < MAX_GOT) {
		copy_str(g->topic[g->n], sizeof(g->topic[0]), m->topic, m->topic_len);
		copy_str(g->payload[g->n], sizeof(g->payload[0]), m->payload, m->payload_len);
		g->qos[g->n] = m->qos;
	}
	g->n++;
}

static void count_cb(const struct retained *m, void *arg)
{
	(*(size_t *)arg)++;
}

static struct got *lookup(const struct retain_store *rs, const char *filter)
{
	static struct got g;

	memset(&g, 0, sizeof(g));
	retain_match(rs, SL(filter), collect, &g);
	return &g;
}

static bool got_has(const struct got *g, const char *topic)
{
	for (size_t i = 0; i < g->n && i < MAX_GOT; i++)
		if (strcmp(g->topic[i], topic) == 0)
			return true;
	return false;
}

static int put(struct retain_store *rs, const char *topic, const char *payload, uint8_t qos)
{
	return retain_put(rs, SL(topic), (const uint8_t *)payload, strlen(payload), qos);
}

/* A store under those limits (0: none). */
static struct retain_store *store_new(size_t max_count, size_t max_bytes)
{
	struct retain_store *rs = retain_new(max_count, max_bytes);

	assert_non_null(rs);
	return rs;
}

/* The store holds count messages, of bytes in all (topics and payloads). */
static void assert_holds(const struct retain_store *rs, size_t count, size_t bytes)
{
	assert_int_equal(retain_count(rs), count);
	assert_int_equal(retain_bytes(rs), bytes);
}

/* topic retains one message: payload, at qos. */
static void assert_retained(const struct retain_store *rs, const char *topic, const char *payload,
			    uint8_t qos)
{
	struct got *g = lookup(rs, topic);

	assert_int_equal(g->n, 1);
	assert_string_equal(g->topic[0], topic);
	assert_string_equal(g->payload[0], payload);
	assert_int_equal(g->qos[0], qos);
}

/* ---- store, replace, clear ---- */

static void test_free_accepts_null_and_clears_pointer(void **state)
{
	struct retain_store *rs = NULL;

	retain_free(NULL);
	retain_free(&rs);
	rs = retain_new(0, 0);
	assert_non_null(rs);
	retain_free(&rs);
	assert_null(rs);
	assert_int_equal(retain_count(NULL), 0);
	assert_int_equal(retain_bytes(NULL), 0);
}

static void test_put_keeps_own_copy(void **state)
{
	struct retain_store *rs = store_new(0, 0);
	char topic[] = "home/kitchen/temp";
	uint8_t payload[] = "21.5";

	assert_int_equal(retain_put(rs, topic, strlen(topic), payload, 4, 1), RETAIN_STORED);
	memset(topic, 'x', strlen(topic));
	memset(payload, 'y', 4);
	assert_retained(rs, "home/kitchen/temp", "21.5", 1);
	assert_holds(rs, 1, strlen("home/kitchen/temp") + 4);
	retain_free(&rs);
}

static void test_put_existing_topic_replaces(void **state)
{
	struct retain_store *rs = store_new(0, 0);

	assert_int_equal(put(rs, "a/b", "one", 0), RETAIN_STORED);
	assert_int_equal(put(rs, "a/b", "three", 2), RETAIN_STORED);
	assert_holds(rs, 1, 3 + 5);
	assert_retained(rs, "a/b", "three", 2);
	retain_free(&rs);
}

static void test_empty_payload_clears(void **state)
{
	struct retain_store *rs = store_new(0, 0);

	assert_int_equal(put(rs, "a/b", "x", 0), RETAIN_STORED);
	assert_int_equal(put(rs, "a/b/c", "y", 0), RETAIN_STORED);
	assert_int_equal(retain_put(rs, SL("a/b"), NULL, 0, 0), RETAIN_CLEARED);
	assert_holds(rs, 1, 5 + 1);
	assert_int_equal(lookup(rs, "a/b")->n, 0);
	assert_int_equal(lookup(rs, "a/b/c")->n, 1);
	assert_int_equal(retain_put(rs, SL("a/b/c"), NULL, 0, 0), RETAIN_CLEARED);
	assert_holds(rs, 0, 0);
	assert_int_equal(lookup(rs, "#")->n, 0);
	retain_free(&rs);
}

static void test_clearing_missing_topic_is_cleared(void **state)
{
	struct retain_store *rs = store_new(0, 0);

	assert_int_equal(retain_put(rs, SL("nothing/here"), NULL, 0, 0), RETAIN_CLEARED);
	assert_int_equal(put(rs, "a/b/c", "x", 0), RETAIN_STORED);
	/* "a/b" exists only as a path to "a/b/c": nothing to clear. */
	assert_int_equal(retain_put(rs, SL("a/b"), NULL, 0, 0), RETAIN_CLEARED);
	assert_int_equal(retain_count(rs), 1);
	assert_int_equal(lookup(rs, "a/b/c")->n, 1);
	retain_free(&rs);
}

static void test_clearing_gives_memory_back(void **state)
{
	static const char *const topics[] = {
		"a", "a/b", "a/b/c", "a//b", "/", "$SYS/x", "deep/path/only/used/once",
	};
	struct retain_store *rs = store_new(0, 0);
	size_t before;

	before = test_live_memory();
	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
		assert_int_equal(put(rs, topics[i], "payload", 1), RETAIN_STORED);
	assert_true(test_live_memory() > before);
	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
		assert_int_equal(retain_put(rs, SL(topics[i]), NULL, 0, 0), RETAIN_CLEARED);
	assert_int_equal(retain_count(rs), 0);
	assert_int_equal(test_live_memory(), before);
	retain_free(&rs);
}

/* ---- limits ---- */

static void test_new_topic_past_max_count_is_full(void **state)
{
	struct retain_store *rs = store_new(2, 0);

	assert_int_equal(put(rs, "a", "1", 0), RETAIN_STORED);
	assert_int_equal(put(rs, "b", "2", 0), RETAIN_STORED);
	assert_int_equal(put(rs, "c/d", "3", 0), RETAIN_FULL);
	assert_holds(rs, 2, 4);
	assert_int_equal(lookup(rs, "#")->n, 2);
	/* Replacing and clearing still work at the limit. */
	assert_int_equal(put(rs, "a", "11", 0), RETAIN_STORED);
	assert_int_equal(retain_put(rs, SL("b"), NULL, 0, 0), RETAIN_CLEARED);
	assert_int_equal(put(rs, "c/d", "3", 0), RETAIN_STORED);
	assert_int_equal(retain_count(rs), 2);
	retain_free(&rs);
}

static void test_new_topic_or_replacement_past_max_bytes_is_full(void **state)
{
	struct retain_store *rs = store_new(0, 10);

	assert_int_equal(put(rs, "ab", "1234", 0), RETAIN_STORED);  /* 6 */
	assert_int_equal(put(rs, "cd", "123", 0), RETAIN_FULL);     /* would be 11 */
	assert_holds(rs, 1, 6);
	assert_int_equal(lookup(rs, "cd")->n, 0);
	assert_int_equal(put(rs, "cd", "12", 0), RETAIN_STORED);    /* exactly 10 */
	/* A replacement counts what it adds: past the limit it is refused, the old one kept. */
	assert_int_equal(put(rs, "ab", "12345", 2), RETAIN_FULL);   /* would be 11 */
	assert_retained(rs, "ab", "1234", 0);
	assert_int_equal(retain_bytes(rs), 10);
	assert_int_equal(put(rs, "ab", "1", 0), RETAIN_STORED);     /* shrinking is fine */
	assert_int_equal(retain_bytes(rs), 7);
	assert_int_equal(put(rs, "ab", "1234", 1), RETAIN_STORED);  /* growing within: 10 */
	assert_retained(rs, "ab", "1234", 1);
	assert_holds(rs, 2, 10);
	retain_free(&rs);
}

/* A reload lowers the limits below what is held: nothing goes, nothing new comes in. */
static void test_lowered_limits_evict_nothing_and_refuse_growth(void **state)
{
	struct retain_store *rs = store_new(0, 0);

	assert_int_equal(put(rs, "ab", "1234", 0), RETAIN_STORED);   /* 6 */
	assert_int_equal(put(rs, "cd", "1234", 0), RETAIN_STORED);   /* 12 */
	assert_int_equal(put(rs, "ef", "1234", 0), RETAIN_STORED);   /* 18 */
	retain_set_limits(rs, 2, 10);
	assert_holds(rs, 3, 18);
	assert_int_equal(lookup(rs, "#")->n, 3);
	assert_int_equal(put(rs, "gh", "1", 0), RETAIN_FULL);
	assert_int_equal(put(rs, "ab", "12345", 0), RETAIN_FULL);    /* growing past the budget */
	assert_int_equal(put(rs, "ab", "9876", 0), RETAIN_STORED);   /* same size: a new value */
	assert_retained(rs, "ab", "9876", 0);
	assert_int_equal(put(rs, "cd", "1", 0), RETAIN_STORED);      /* shrinking: 15 */
	assert_int_equal(retain_bytes(rs), 15);
	assert_int_equal(retain_put(rs, SL("ef"), NULL, 0, 0), RETAIN_CLEARED);
	assert_int_equal(retain_put(rs, SL("cd"), NULL, 0, 0), RETAIN_CLEARED); /* 6, 1 topic */
	assert_int_equal(put(rs, "gh", "12", 0), RETAIN_STORED);     /* fits again: 10 */
	/* Raised (or lifted) limits take new topics at once. */
	retain_set_limits(rs, 0, 0);
	assert_int_equal(put(rs, "ij", "123456789", 0), RETAIN_STORED);
	assert_int_equal(retain_count(rs), 3);
	retain_free(&rs);
}

/* ---- matching ---- */

/* "$first" comes first so that the '$' rule is exercised on the first child too. */
static const char *const stored_topics[] = {
	"$first", "sport", "sport/", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
	"sport/tennis/player1/score/wimbledon", "sport/tennis/player2", "sport/golf",
	"/finance", "finance", "/", "a//b", "$SYS", "$SYS/monitor/Clients", "x/$y",
};

struct retain_case {
	const char *filter;
	const char *want[10];
};

static const struct retain_case retain_cases[] = {
	{ "sport/tennis/player1/#", { "sport/tennis/player1", "sport/tennis/player1/ranking",
				      "sport/tennis/player1/score/wimbledon" } },
	{ "sport/tennis/+", { "sport/tennis/player1", "sport/tennis/player2" } },
	{ "sport/+", { "sport/", "sport/tennis", "sport/golf" } },
	{ "+", { "sport", "finance" } },
	{ "+/+", { "sport/", "sport/tennis", "sport/golf", "/finance", "/", "x/$y" } },
	{ "/+", { "/finance", "/" } },
	{ "+/tennis/#", { "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
			  "sport/tennis/player1/score/wimbledon", "sport/tennis/player2" } },
	{ "sport/+/player1", { "sport/tennis/player1" } },
	{ "a/+/b", { "a//b" } },
	{ "+/monitor/Clients", { NULL } },
	{ "$SYS/#", { "$SYS", "$SYS/monitor/Clients" } },
	{ "$SYS/monitor/+", { "$SYS/monitor/Clients" } },
	{ "finance", { "finance" } },
	{ "sport/tennis/player3", { NULL } },
	{ "sport/tennis/player1/ranking/x", { NULL } },
};

static size_t want_count(const struct retain_case *c)
{
	size_t n = 0;

	while (n < sizeof(c->want) / sizeof(c->want[0]) && c->want[n])
		n++;
	return n;
}

static struct retain_store *store_topics(void)
{
	struct retain_store *rs = store_new(0, 0);

	for (size_t i = 0; i < sizeof(stored_topics) / sizeof(stored_topics[0]); i++)
		assert_int_equal(put(rs, stored_topics[i], stored_topics[i], 0), RETAIN_STORED);
	return rs;
}

static void test_wildcard_match_table(void **state)
{
	struct retain_store *rs = store_topics();
	int failures = 0;

	for (size_t i = 0; i < sizeof(retain_cases) / sizeof(retain_cases[0]); i++) {
		const struct retain_case *c = &retain_cases[i];
		struct got *g = lookup(rs, c->filter);
		size_t want = want_count(c);

		if (g->n != want) {
			print_error("retain_match(\"%s\"): got %zu messages, want %zu\n",
				    c->filter, g->n, want);
			failures++;
			continue;
		}
		for (size_t k = 0; k < want; k++) {
			if (!got_has(g, c->want[k])) {
				print_error("retain_match(\"%s\"): missing \"%s\"\n", c->filter,
					    c->want[k]);
				failures++;
			}
		}
	}
	assert_int_equal(failures, 0);
	retain_free(&rs);
}

/* Every stored topic is reported iff topic_matches says so. */
static void test_wildcard_match_agrees_with_topic_matches(void **state)
{
	static const char *const filters[] = {
		"#", "+", "+/+", "+/#", "sport/#", "/#", "+/+/+", "+/tennis/+", "$SYS/+", "$SYS/#",
		"x/+", "+/$y", "sport/+/+/#", "/",
	};
	struct retain_store *rs = store_topics();
	int failures = 0;

	for (size_t f = 0; f < sizeof(filters) / sizeof(filters[0]); f++) {
		struct got *g = lookup(rs, filters[f]);
		size_t want = 0;

		for (size_t i = 0; i < sizeof(stored_topics) / sizeof(stored_topics[0]); i++) {
			bool m = topic_matches(SL(filters[f]), SL(stored_topics[i]));

			want += m;
			if (m != got_has(g, stored_topics[i])) {
				print_error("retain_match(\"%s\") on \"%s\": got %d, want %d\n",
					    filters[f], stored_topics[i], !m, m);
				failures++;
			}
		}
		if (g->n != want) {
			print_error("retain_match(\"%s\"): got %zu messages, want %zu\n",
				    filters[f], g->n, want);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
	retain_free(&rs);
}

static void test_hash_skips_dollar_topics(void **state)
{
	struct retain_store *rs = store_topics();
	struct got *g = lookup(rs, "#");

	assert_int_equal(g->n, sizeof(stored_topics) / sizeof(stored_topics[0]) - 3);
	assert_false(got_has(g, "$first"));
	assert_false(got_has(g, "$SYS"));
	assert_false(got_has(g, "$SYS/monitor/Clients"));
	assert_true(got_has(g, "x/$y"));
	retain_free(&rs);
}

static void test_hash_matches_parent_level(void **state)
{
	struct retain_store *rs = store_topics();
	struct got *g = lookup(rs, "sport/tennis/player1/#");

	assert_true(got_has(g, "sport/tennis/player1"));
	retain_free(&rs);
}

static void test_filter_uses_length_not_nul(void **state)
{
	struct retain_store *rs = store_topics();
	struct got g = { .n = 0 };

	retain_match(rs, "sport/golfers", 10, collect, &g);
	assert_int_equal(g.n, 1);
	assert_string_equal(g.topic[0], "sport/golf");
	retain_free(&rs);
}

/* ---- scale ---- */

static void test_ten_thousand_level_topic(void **state)
{
	enum { LEVELS = 10000 };
	struct retain_store *rs = store_new(0, 0);
	size_t tlen, plen, calls = 0;
	char *topic = repeat_levels("l", LEVELS, NULL, &tlen);
	char *plus = repeat_levels("+", LEVELS, NULL, &plen);

	assert_int_equal(retain_put(rs, topic, tlen, (const uint8_t *)"p", 1, 0), RETAIN_STORED);
	assert_int_equal(put(rs, "l/x", "q", 0), RETAIN_STORED);
	retain_match(rs, topic, tlen, count_cb, &calls);
	assert_int_equal(calls, 1);
	calls = 0;
	retain_match(rs, plus, plen, count_cb, &calls);
	assert_int_equal(calls, 1);
	calls = 0;
	retain_match(rs, SL("#"), count_cb, &calls);
	assert_int_equal(calls, 2);
	calls = 0;
	retain_match(rs, SL("l/+/#"), count_cb, &calls);
	assert_int_equal(calls, 2);
	retain_free(&rs); /* one deep message left in place: freed without recursion */
	free(topic);
	free(plus);
}

static void test_hundred_thousand_sibling_topics(void **state)
{
	enum { N = 100000 };
	struct retain_store *rs = store_new(0, 0);
	char buf[32];
	size_t calls = 0;
	struct got g;

	for (unsigned long i = 0; i < N; i++) {
		int n = snprintf(buf, sizeof(buf), "dev/%lu", i);

		assert_int_equal(retain_put(rs, buf, (size_t)n, (const uint8_t *)buf, (size_t)n, 0),
				 RETAIN_STORED);
	}
	assert_int_equal(retain_count(rs), N);
	for (unsigned long i = 0; i < N; i += 7) {
		int n = snprintf(buf, sizeof(buf), "dev/%lu", i);

		memset(&g, 0, sizeof(g));
		retain_match(rs, buf, (size_t)n, collect, &g);
		assert_int_equal(g.n, 1);
		assert_string_equal(g.payload[0], buf);
	}
	retain_match(rs, SL("dev/+"), count_cb, &calls);
	assert_int_equal(calls, N);
	for (unsigned long i = 0; i < N; i += 2) {
		int n = snprintf(buf, sizeof(buf), "dev/%lu", i);

		assert_int_equal(retain_put(rs, buf, (size_t)n, NULL, 0, 0), RETAIN_CLEARED);
	}
	assert_int_equal(retain_count(rs), N / 2);
	calls = 0;
	retain_match(rs, SL("#"), count_cb, &calls);
	assert_int_equal(calls, N / 2);
	retain_free(&rs);
}

/* ---- out of memory (without ASan, which owns malloc itself) ---- */

#ifndef TEST_ASAN
/* Stores, failing each allocation in turn until it goes through. */
static int put_despite_failures(struct retain_store *rs, const char *topic, const char *payload)
{
	for (long k = 0;; k++) {
		size_t live = test_live_memory(), count = retain_count(rs), bytes = retain_bytes(rs);
		int rc;

		WITH_ALLOC_FAILING(k, rc = put(rs, topic, payload, 1));
		if (rc != RETAIN_NOMEM)
			return rc;
		assert_int_equal(test_live_memory(), live);
		assert_holds(rs, count, bytes);
	}
}
#endif

static void test_new_without_memory_returns_null(void **state)
{
#ifndef TEST_ASAN
	assert_null_without_memory(2, retain_new(0, 0));
#else
	skip();
#endif
}

static void test_put_without_memory_changes_nothing(void **state)
{
#ifndef TEST_ASAN
	struct retain_store *rs = store_new(0, 0);
	char buf[32];

	assert_int_equal(put_despite_failures(rs, "a/b/c/d", "one"), RETAIN_STORED);
	/* A failed replacement keeps the old message. */
	WITH_ALLOC_FAILING(0, assert_int_equal(put(rs, "a/b/c/d", "two", 2), RETAIN_NOMEM));
	assert_retained(rs, "a/b/c/d", "one", 1);
	assert_int_equal(put_despite_failures(rs, "a/b/c/d", "two"), RETAIN_STORED);
	assert_int_equal(put_despite_failures(rs, "a/b/x", "three"), RETAIN_STORED);
	/* Enough siblings for uthash to grow its bucket array at some point. */
	for (int i = 0; i < 1000; i++) {
		snprintf(buf, sizeof(buf), "s/%d", i);
		assert_int_equal(put_despite_failures(rs, buf, "v"), RETAIN_STORED);
	}
	assert_int_equal(retain_count(rs), 1002);
	assert_int_equal(lookup(rs, "s/+")->n, 1000);
	assert_int_equal(lookup(rs, "a/#")->n, 2);
	retain_free(&rs);
#else
	skip();
#endif
}

/* ---- resumable walks ---- */

/* Collects like collect(); stops the walk after 'stop_after' messages (0: never). */
struct step_got {
	struct got g;
	size_t stop_after;
};

static bool step_collect(const struct retained *m, void *arg)
{
	struct step_got *s = arg;

	collect(m, &s->g);
	return !s->stop_after || s->g.n % s->stop_after != 0;
}

/* Run c to its end one step at a time; returns the calls needed. */
static size_t run_by_one_step(struct retain_store *rs, struct retain_cursor *c,
			      struct step_got *s)
{
	size_t calls = 0;

	for (;;) {
		size_t steps = 1;

		calls++;
		if (retain_cursor_next(rs, c, &steps, step_collect, s))
			return calls;
		assert_int_equal(steps, 0);
		assert_true(calls < 100000);
	}
}

static void test_cursor_reports_what_match_reports_one_step_at_a_time(void **state)
{
	static const char *filters[] = { "#", "a/#", "a/+", "+/+/c", "a/b/c", "+", "$SYS/#",
					 "nothing/#", "a/+/+/#" };
	struct retain_store *rs = retain_new(0, 0);
	char buf[32];

	(void)state;
	for (int i = 0; i < 8; i++) {
		snprintf(buf, sizeof(buf), "a/%d/c", i);
		put(rs, buf, "v", 0);
	}
	put(rs, "a", "v", 0);
	put(rs, "a/b/c", "v", 0);
	put(rs, "a/b/c/d/e", "v", 0);
	put(rs, "$SYS/x", "v", 0);
	put(rs, "z", "v", 0);
	for (size_t f = 0; f < sizeof(filters) / sizeof(filters[0]); f++) {
		struct retain_cursor c;
		struct step_got s = { 0 };
		size_t want = lookup(rs, filters[f])->n;

		retain_cursor_start(rs, &c, SL(filters[f]));
		run_by_one_step(rs, &c, &s);
		assert_int_equal(s.g.n, want);
		for (size_t i = 0; i < s.g.n; i++)
			assert_true(got_has(lookup(rs, filters[f]), s.g.topic[i]));
	}
	retain_free(&rs);
}

static void test_cursor_stops_when_told_and_resumes_where_it_stopped(void **state)
{
	struct retain_store *rs = retain_new(0, 0);
	struct retain_cursor c;
	struct step_got s = { .stop_after = 1 };
	size_t steps, calls = 0;
	char buf[32];

	(void)state;
	for (int i = 0; i < 10; i++) {
		snprintf(buf, sizeof(buf), "t/%d", i);
		put(rs, buf, buf, 1);
	}
	retain_cursor_start(rs, &c, SL("t/#"));
	for (;;) {
		size_t before = s.g.n;
		bool done;

		steps = SIZE_MAX;
		done = retain_cursor_next(rs, &c, &steps, step_collect, &s);
		calls++;
		if (done)
			break;
		assert_int_equal(s.g.n, before + 1);     /* one message per call */
	}
	assert_int_equal(s.g.n, 10);
	assert_int_equal(calls, 11);
	for (int i = 0; i < 10; i++) {
		snprintf(buf, sizeof(buf), "t/%d", i);
		assert_true(got_has(&s.g, buf));
	}
	retain_free(&rs);
}

static void test_cursor_skips_topics_stored_or_cleared_after_its_start(void **state)
{
	struct retain_store *rs = retain_new(0, 0);
	struct retain_cursor c;
	struct step_got s = { 0 };

	(void)state;
	put(rs, "t/old", "1", 0);
	put(rs, "t/replaced", "1", 0);
	put(rs, "t/cleared", "1", 0);
	retain_cursor_start(rs, &c, SL("t/#"));
	put(rs, "t/replaced", "2", 0);       /* the subscription got "2" live */
	put(rs, "t/cleared", "", 0);
	put(rs, "t/new", "1", 0);
	run_by_one_step(rs, &c, &s);
	assert_int_equal(s.g.n, 1);
	assert_string_equal(s.g.topic[0], "t/old");
	retain_free(&rs);
}

/*
 * The store changes under a cursor at every step: the node it stands on
 * and its neighbours are cleared, new topics appear. Under AddressSanitizer
 * this proves that no freed node is touched; the pins are all given back
 * (the store empties to nothing when every topic is cleared).
 */
static void test_cursor_survives_topics_removed_under_it(void **state)
{
	struct retain_store *rs = retain_new(0, 0);
	struct retain_cursor c, c2;
	struct step_got s = { 0 };
	char buf[32];
	size_t calls = 0;

	(void)state;
	for (int i = 0; i < 50; i++) {
		snprintf(buf, sizeof(buf), "a/%d/x/%d", i % 7, i);
		put(rs, buf, "v", 0);
	}
	retain_cursor_start(rs, &c, SL("a/+/x/#"));
	retain_cursor_start(rs, &c2, SL("#"));
	for (;;) {
		size_t steps = 3;

		if (retain_cursor_next(rs, &c, &steps, step_collect, &s))
			break;
		/* Clear a topic the walk may not have reached yet, and add one. */
		snprintf(buf, sizeof(buf), "a/%zu/x/%zu", (calls * 3) % 7, calls * 3);
		put(rs, buf, "", 0);
		snprintf(buf, sizeof(buf), "a/%zu/x/new%zu", calls % 7, calls);
		put(rs, buf, "v", 0);
		calls++;
		assert_true(calls < 10000);
	}
	assert_true(s.g.n > 0 && s.g.n < 50);
	/* Clear everything while c2 still stands somewhere: then stop it. */
	{
		size_t steps = 5;

		assert_false(retain_cursor_next(rs, &c2, &steps, step_collect, &s));
	}
	for (int i = 0; i < 50; i++) {
		snprintf(buf, sizeof(buf), "a/%d/x/%d", i % 7, i);
		put(rs, buf, "", 0);
	}
	for (size_t i = 0; i < calls; i++) {
		snprintf(buf, sizeof(buf), "a/%zu/x/new%zu", i % 7, i);
		put(rs, buf, "", 0);
	}
	assert_int_equal(retain_count(rs), 0);
	retain_cursor_stop(rs, &c2);
	retain_cursor_stop(rs, &c2);          /* twice is fine */
	assert_int_equal(lookup(rs, "#")->n, 0);
	retain_free(&rs);
}

/*
 * Messages with an expiry: walks report it with their properties until
 * retain_expire() removes them, a bounded number of nodes per call, going
 * on where the last call stopped ('$' topics too); the counts follow.
 */
static void test_expired_messages_are_swept_a_bounded_part_at_a_time(void **state)
{
	struct retain_store *rs = retain_new(0, 0);
	const struct retained a = { .topic = "a/x", .topic_len = 3, .payload = (const uint8_t *)"1",
				    .payload_len = 1, .props = (const uint8_t *)"\x02\x01\x01",
				    .props_len = 3, .expires_at = 1000, .qos = 1 };
	struct retained b = a, d = a;
	size_t calls = 0, gone = 0;
	struct got *g;

	b.topic = "b";
	b.topic_len = 1;
	b.expires_at = 5000;
	d.topic = "$d/y";
	d.topic_len = 4;
	assert_non_null(rs);
	assert_int_equal(retain_put_msg(rs, &a), RETAIN_STORED);
	assert_int_equal(retain_put_msg(rs, &b), RETAIN_STORED);
	assert_int_equal(retain_put_msg(rs, &d), RETAIN_STORED);
	assert_int_equal(put(rs, "c", "kept", 0), RETAIN_STORED);
	assert_int_equal(retain_bytes(rs), 3 + 1 + 3 + 1 + 1 + 3 + 4 + 1 + 3 + 1 + 4);
	assert_int_equal(retain_expire(rs, 999, 100, count_cb, &calls), 0);
	g = lookup(rs, "a/x");
	assert_int_equal(g->n, 1);
	/* One node per call: the whole tree (root, a, a/x, b, $d, $d/y, c) takes 7 calls. */
	for (int i = 0; i < 7; i++)
		gone += retain_expire(rs, 1000, 1, count_cb, &calls);
	assert_int_equal(gone, 2);
	assert_int_equal(calls, 2);
	assert_int_equal(retain_count(rs), 2);
	assert_int_equal(lookup(rs, "a/x")->n, 0);
	assert_int_equal(lookup(rs, "$d/y")->n, 0);
	assert_int_equal(lookup(rs, "b")->n, 1);
	assert_int_equal(retain_expire(rs, 5000, 100, count_cb, &calls), 1);
	assert_int_equal(retain_count(rs), 1);
	assert_int_equal(retain_bytes(rs), 1 + 4);
	/* Nothing left with an expiry: the sweep costs nothing. */
	assert_int_equal(retain_expire(rs, UINT64_MAX, 100, count_cb, &calls), 0);
	assert_int_equal(calls, 3);
	retain_free(&rs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_free_accepts_null_and_clears_pointer),
		cmocka_unit_test(test_put_keeps_own_copy),
		cmocka_unit_test(test_put_existing_topic_replaces),
		cmocka_unit_test(test_empty_payload_clears),
		cmocka_unit_test(test_clearing_missing_topic_is_cleared),
		cmocka_unit_test(test_clearing_gives_memory_back),
		cmocka_unit_test(test_new_topic_past_max_count_is_full),
		cmocka_unit_test(test_new_topic_or_replacement_past_max_bytes_is_full),
		cmocka_unit_test(test_lowered_limits_evict_nothing_and_refuse_growth),
		cmocka_unit_test(test_wildcard_match_table),
		cmocka_unit_test(test_wildcard_match_agrees_with_topic_matches),
		cmocka_unit_test(test_hash_skips_dollar_topics),
		cmocka_unit_test(test_hash_matches_parent_level),
		cmocka_unit_test(test_filter_uses_length_not_nul),
		cmocka_unit_test(test_ten_thousand_level_topic),
		cmocka_unit_test(test_hundred_thousand_sibling_topics),
		cmocka_unit_test(test_new_without_memory_returns_null),
		cmocka_unit_test(test_put_without_memory_changes_nothing),
		cmocka_unit_test(test_cursor_reports_what_match_reports_one_step_at_a_time),
		cmocka_unit_test(test_cursor_stops_when_told_and_resumes_where_it_stopped),
		cmocka_unit_test(test_cursor_skips_topics_stored_or_cleared_after_its_start),
		cmocka_unit_test(test_cursor_survives_topics_removed_under_it),
		cmocka_unit_test(test_expired_messages_are_swept_a_bounded_part_at_a_time),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
