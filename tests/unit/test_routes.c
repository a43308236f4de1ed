/*
 * test_routes.c - unit tests of a worker's route cache (daemon/routes.c):
 * asks and the answers taken or refused, where a message goes (routes_decide:
 * here, to the router, asking or not), the bounds (a sweep of older
 * generations), topics told apart by their bytes, and freeing (ASan in
 * `make check-san` reports any leak).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyhash.h"
#include "routes.h"

#define T(s) (const uint8_t *)(s), (uint16_t)strlen(s)

static const struct route_target three[] = {
	{ 0x1001, 0 }, { 0x1002, 1 }, { 0x1003, 2 },
};

static struct route *find(const struct route_cache *rc, const char *topic)
{
	return routes_find(rc, T(topic));
}

/* What the cache accounts for one entry with n targets. */
static size_t entry_bytes(const char *topic, uint32_t n)
{
	return sizeof(struct route) + strlen(topic) + n * sizeof(struct route_target);
}

/* The entry rt for topic holds no target, and the cache accounts for it alone. */
static void assert_bare(const struct route_cache *rc, const struct route *rt, const char *topic)
{
	assert_int_equal(rt->n_targets, 0);
	assert_null(rt->targets);
	assert_int_equal(rc->bytes, entry_bytes(topic, 0));
}

/* Ask, then answer that very ask as local at gen: the usual way to a LOCAL entry. */
static struct route *make_local(struct route_cache *rc, const char *topic, uint64_t gen,
				const struct route_target *t, uint32_t n)
{
	uint64_t ask = routes_ask(rc, T(topic), 1);

	assert_int_not_equal(ask, 0);
	assert_true(routes_answer(rc, T(topic), ask, gen, gen, true, t, n));
	return find(rc, topic);
}

static void find_on_an_empty_cache_is_null(void **state)
{
	struct route_cache rc = { 0 };

	assert_null(find(&rc, "a"));
	assert_null(routes_find(&rc, NULL, 0));
	assert_false(routes_answer(&rc, T("a"), 1, 0, 0, true, NULL, 0));
	assert_false(routes_answer(&rc, T("a"), 1, 0, 0, false, NULL, 0));
	assert_null(find(&rc, "a"));          /* an answer never creates an entry */
	assert_int_equal(rc.bytes, 0);
	routes_free(&rc);
	routes_free(&rc);
	assert_null(find(&rc, "a"));
}

static void ask_creates_an_asked_entry_with_increasing_asks(void **state)
{
	struct route_cache rc = { 0 };
	struct route *rt;
	uint64_t a1, a2, b1;

	a1 = routes_ask(&rc, T("a/b"), 1);
	assert_int_not_equal(a1, 0);
	rt = find(&rc, "a/b");
	assert_non_null(rt);
	assert_int_equal(rt->kind, ROUTE_ASKED);
	assert_int_equal(rt->ask, a1);
	assert_int_equal(rt->n_targets, 0);
	assert_null(rt->targets);
	assert_int_equal(rt->topic_len, 3);
	assert_memory_equal(rt->topic, "a/b", 3);
	assert_int_equal(rc.bytes, entry_bytes("a/b", 0));

	a2 = routes_ask(&rc, T("a/b"), 1);       /* the same entry, asked again */
	assert_true(a2 > a1);
	assert_ptr_equal(find(&rc, "a/b"), rt);
	assert_int_equal(rt->ask, a2);
	assert_int_equal(rt->kind, ROUTE_ASKED);
	assert_int_equal(hidx_count(&rc.idx), 1);
	assert_int_equal(rc.bytes, entry_bytes("a/b", 0));

	b1 = routes_ask(&rc, T("b"), 1);         /* one sequence for every topic */
	assert_true(b1 > a2);
	assert_int_equal(hidx_count(&rc.idx), 2);
	assert_int_equal(find(&rc, "b")->ask, b1);
	assert_int_equal(rt->ask, a2);
	routes_free(&rc);
}

static void local_answer_to_the_last_ask_at_the_current_gen_is_taken(void **state)
{
	struct route_cache rc = { 0 };
	struct route_target t[3];
	struct route *rt;
	uint64_t ask;

	memcpy(t, three, sizeof(t));
	ask = routes_ask(&rc, T("x"), 1);
	assert_true(routes_answer(&rc, T("x"), ask, 7, 7, true, t, 3));
	rt = find(&rc, "x");
	assert_non_null(rt);
	assert_int_equal(rt->kind, ROUTE_LOCAL);
	assert_int_equal(rt->gen, 7);
	assert_int_equal(rt->n_targets, 3);
	/* A copy: the caller's array (the worker's scratch) is reused at once. */
	assert_ptr_not_equal(rt->targets, t);
	memset(t, 0xff, sizeof(t));
	for (uint32_t i = 0; i < 3; i++) {
		assert_int_equal(rt->targets[i].conn, three[i].conn);
		assert_int_equal(rt->targets[i].qos, three[i].qos);
	}
	assert_int_equal(rc.bytes, entry_bytes("x", 3));

	/* No subscriber at all is a local route too: nothing to deliver. */
	rt = make_local(&rc, "none", 7, NULL, 0);
	assert_int_equal(rt->kind, ROUTE_LOCAL);
	assert_int_equal(rt->n_targets, 0);
	assert_null(rt->targets);
	assert_int_equal(rc.bytes, entry_bytes("x", 3) + entry_bytes("none", 0));
	routes_free(&rc);
}

/*
 * Two asks outstanding: a local answer to the older one is refused (only
 * the last ask's may be taken), a remote one is taken whatever the ask.
 */
static void an_older_ask_takes_a_remote_answer_but_not_a_local_one(void **state)
{
	struct route_cache rc = { 0 };
	struct route *rt;
	uint64_t old, last;

	old = routes_ask(&rc, T("x"), 1);
	last = routes_ask(&rc, T("x"), 1);
	assert_false(routes_answer(&rc, T("x"), old, 9, 9, true, three, 3));
	/* An ask from the future (never sent) is refused too. */
	assert_false(routes_answer(&rc, T("x"), last + 1, 9, 9, true, three, 3));
	rt = find(&rc, "x");
	assert_int_equal(rt->kind, ROUTE_ASKED);
	assert_int_equal(rt->ask, last);
	assert_bare(&rc, rt, "x");

	assert_true(routes_answer(&rc, T("x"), old, 9, 9, false, NULL, 0));
	assert_int_equal(rt->kind, ROUTE_REMOTE);
	assert_int_equal(rt->gen, 9);
	assert_bare(&rc, rt, "x");
	/* Answered: the reply to the last ask comes too late. */
	assert_false(routes_answer(&rc, T("x"), last, 9, 9, true, three, 3));
	assert_int_equal(rt->kind, ROUTE_REMOTE);
	assert_int_equal(rt->n_targets, 0);

	/* The last ask itself takes either. */
	last = routes_ask(&rc, T("y"), 1);
	assert_true(routes_answer(&rc, T("y"), last, 9, 9, true, three, 1));
	assert_int_equal(find(&rc, "y")->kind, ROUTE_LOCAL);
	assert_int_equal(find(&rc, "y")->n_targets, 1);
	last = routes_ask(&rc, T("z"), 1);
	assert_true(routes_answer(&rc, T("z"), last, 9, 9, false, NULL, 0));
	assert_int_equal(find(&rc, "z")->kind, ROUTE_REMOTE);
	routes_free(&rc);
}

static void answer_at_another_gen_is_refused(void **state)
{
	struct route_cache rc = { 0 };
	uint64_t ask = routes_ask(&rc, T("x"), 1);

	assert_false(routes_answer(&rc, T("x"), ask, 4, 5, true, three, 3));   /* older */
	assert_false(routes_answer(&rc, T("x"), ask, 6, 5, true, three, 3));   /* newer */
	assert_false(routes_answer(&rc, T("x"), ask, 4, 5, false, NULL, 0));
	assert_int_equal(find(&rc, "x")->kind, ROUTE_ASKED);
	assert_int_equal(find(&rc, "x")->ask, ask);
	/* Still waiting: the answer at the current gen is taken. */
	assert_true(routes_answer(&rc, T("x"), ask, 5, 5, true, three, 3));
	routes_free(&rc);
}

static void answer_for_a_topic_not_asked_or_already_answered_is_refused(void **state)
{
	struct route_cache rc = { 0 };
	struct route *rt;
	uint64_t ask;

	ask = routes_ask(&rc, T("asked"), 1);
	assert_false(routes_answer(&rc, T("other"), ask, 1, 1, true, three, 3));
	assert_false(routes_answer(&rc, T("other"), ask, 1, 1, false, NULL, 0));
	assert_null(find(&rc, "other"));
	assert_int_equal(hidx_count(&rc.idx), 1);

	assert_true(routes_answer(&rc, T("asked"), ask, 1, 1, true, three, 2));
	rt = find(&rc, "asked");
	/* The same answer twice, another local one, a remote one: all refused. */
	assert_false(routes_answer(&rc, T("asked"), ask, 1, 1, true, three, 2));
	assert_false(routes_answer(&rc, T("asked"), ask, 1, 1, true, three, 3));
	assert_false(routes_answer(&rc, T("asked"), ask, 1, 1, false, NULL, 0));
	assert_int_equal(rt->kind, ROUTE_LOCAL);
	assert_int_equal(rt->n_targets, 2);
	assert_int_equal(rt->targets[1].conn, three[1].conn);
	assert_int_equal(rc.bytes, entry_bytes("asked", 2));
	routes_free(&rc);
}

static void asking_again_turns_an_answered_entry_asked_and_drops_its_targets(void **state)
{
	struct route_cache rc = { 0 };
	struct route *rt = make_local(&rc, "x", 2, three, 3);
	uint64_t first = rt->ask, again;

	assert_int_equal(rc.bytes, entry_bytes("x", 3));
	again = routes_ask(&rc, T("x"), 1);
	assert_true(again > first);
	assert_ptr_equal(find(&rc, "x"), rt);
	assert_int_equal(rt->kind, ROUTE_ASKED);
	assert_int_equal(rt->ask, again);
	assert_bare(&rc, rt, "x");
	/* The earlier answer, at the same gen, cannot come back. */
	assert_false(routes_answer(&rc, T("x"), first, 2, 2, true, three, 3));
	assert_true(routes_answer(&rc, T("x"), again, 3, 3, true, three + 2, 1));
	assert_int_equal(rt->n_targets, 1);
	assert_int_equal(rt->targets[0].conn, three[2].conn);
	assert_int_equal(rt->gen, 3);

	/* A remote entry asked again (a new gen) is ASKED as well. */
	again = routes_ask(&rc, T("r"), 1);
	assert_true(routes_answer(&rc, T("r"), again, 3, 3, false, NULL, 0));
	again = routes_ask(&rc, T("r"), 1);
	assert_int_equal(find(&rc, "r")->kind, ROUTE_ASKED);
	assert_int_equal(find(&rc, "r")->ask, again);
	assert_int_equal(rc.bytes, entry_bytes("x", 1) + entry_bytes("r", 0));
	routes_free(&rc);
}

static void topic_name(char *buf, size_t cap, unsigned i)
{
	snprintf(buf, cap, "dev/%u/state", i);
}

/* routes_decide() for a message of topic at gen; *ask_r the ask it carries (or 0). */
static enum route_decision decide(struct route_cache *rc, const char *topic, uint8_t qos,
				  bool retain, uint64_t gen, const struct route **rt,
				  uint64_t *ask_r)
{
	enum route_decision d;
	uint64_t ask = 0xdead;

	*rt = NULL;
	d = routes_decide(rc, T(topic), qos, retain, gen, rt, &ask);
	if (d != ROUTE_DELIVER_LOCAL)
		assert_null(*rt);
	if (d == ROUTE_SEND_ASK)
		assert_int_not_equal(ask, 0);
	*ask_r = d == ROUTE_SEND_ASK ? ask : 0;
	return d;
}

static void decide_asks_for_a_topic_without_a_route(void **state)
{
	struct route_cache rc = { 0 };
	const struct route *rt;
	uint64_t a1, a2;

	assert_int_equal(decide(&rc, "x", 0, false, 4, &rt, &a1), ROUTE_SEND_ASK);
	assert_int_equal(find(&rc, "x")->kind, ROUTE_ASKED);
	assert_int_equal(find(&rc, "x")->ask, a1);
	assert_int_equal(find(&rc, "x")->gen, 4);
	/* Still unanswered: every message asks again, the last ask is the one that counts. */
	assert_int_equal(decide(&rc, "x", 1, false, 4, &rt, &a2), ROUTE_SEND_ASK);
	assert_true(a2 > a1);
	assert_int_equal(find(&rc, "x")->ask, a2);
	assert_false(routes_answer(&rc, T("x"), a1, 4, 4, true, three, 3));
	assert_true(routes_answer(&rc, T("x"), a2, 4, 4, true, three, 3));
	routes_free(&rc);
}

static void decide_delivers_here_on_a_valid_local_route(void **state)
{
	struct route_cache rc = { 0 };
	struct route *local = make_local(&rc, "x", 5, three, 3);
	uint64_t before = local->ask, ask;
	const struct route *rt;

	for (uint8_t qos = 0; qos < 2; qos++) {
		assert_int_equal(decide(&rc, "x", qos, false, 5, &rt, &ask), ROUTE_DELIVER_LOCAL);
		assert_ptr_equal(rt, local);
		assert_int_equal(rt->n_targets, 3);
		assert_int_equal(rt->targets[2].conn, three[2].conn);
	}
	/* Nothing asked, nothing changed. */
	assert_int_equal(local->kind, ROUTE_LOCAL);
	assert_int_equal(local->ask, before);
	assert_int_equal(rc.next_ask, before);
	routes_free(&rc);
}

static void decide_asks_again_once_the_generation_moved(void **state)
{
	struct route_cache rc = { 0 };
	struct route *local = make_local(&rc, "x", 5, three, 3);
	const struct route *rt;
	uint64_t ask;

	assert_int_equal(decide(&rc, "x", 0, false, 6, &rt, &ask), ROUTE_SEND_ASK);
	assert_ptr_equal(find(&rc, "x"), local);
	assert_int_equal(local->kind, ROUTE_ASKED);
	assert_int_equal(local->gen, 6);
	assert_int_equal(local->n_targets, 0);
	assert_int_equal(rc.bytes, entry_bytes("x", 0));
	/* The same for a remote route. */
	assert_int_equal(decide(&rc, "r", 0, false, 6, &rt, &ask), ROUTE_SEND_ASK);
	assert_true(routes_answer(&rc, T("r"), ask, 6, 6, false, NULL, 0));
	assert_int_equal(decide(&rc, "r", 0, false, 7, &rt, &ask), ROUTE_SEND_ASK);
	assert_int_equal(find(&rc, "r")->kind, ROUTE_ASKED);
	routes_free(&rc);
}

static void decide_sends_retained_and_qos2_to_the_router_and_takes_the_route_back(void **state)
{
	static const struct { uint8_t qos; bool retain; } cases[] = {
		{ 2, false }, { 0, true }, { 1, true }, { 2, true },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct route_cache rc = { 0 };
		struct route *local = make_local(&rc, "x", 5, three, 3);
		const struct route *rt;
		uint64_t ask, next;

		assert_int_equal(decide(&rc, "x", cases[i].qos, cases[i].retain, 5, &rt, &ask),
				 ROUTE_SEND_ASK);
		assert_int_equal(local->kind, ROUTE_ASKED);
		assert_int_equal(local->ask, ask);
		assert_int_equal(local->n_targets, 0);
		assert_null(local->targets);
		/* Until the router answers that ask, a QoS 0 message goes there too. */
		assert_int_equal(decide(&rc, "x", 0, false, 5, &rt, &next), ROUTE_SEND_ASK);
		assert_true(next > ask);
		assert_true(routes_answer(&rc, T("x"), next, 5, 5, true, three, 1));
		assert_int_equal(decide(&rc, "x", 0, false, 5, &rt, &ask), ROUTE_DELIVER_LOCAL);
		assert_int_equal(rt->n_targets, 1);
		routes_free(&rc);
	}
}

static void decide_sends_anything_on_a_valid_remote_route_without_asking(void **state)
{
	struct route_cache rc = { 0 };
	const struct route *rt;
	uint64_t ask, last;

	assert_int_equal(decide(&rc, "r", 0, false, 3, &rt, &ask), ROUTE_SEND_ASK);
	assert_true(routes_answer(&rc, T("r"), ask, 3, 3, false, NULL, 0));
	last = rc.next_ask;
	for (uint8_t qos = 0; qos < 3; qos++) {
		assert_int_equal(decide(&rc, "r", qos, false, 3, &rt, &ask), ROUTE_SEND);
		assert_int_equal(decide(&rc, "r", qos, true, 3, &rt, &ask), ROUTE_SEND);
	}
	assert_int_equal(find(&rc, "r")->kind, ROUTE_REMOTE);
	assert_int_equal(rc.next_ask, last);
	routes_free(&rc);
}

static void decide_sends_without_asking_when_the_cache_is_full(void **state)
{
	struct route_cache rc = { 0 };
	const struct route *rt;
	char topic[32];
	uint64_t ask;

	for (unsigned i = 0; i < ROUTES_MAX; i++) {
		topic_name(topic, sizeof(topic), i);
		assert_int_equal(decide(&rc, topic, 0, false, 1, &rt, &ask), ROUTE_SEND_ASK);
	}
	assert_int_equal(decide(&rc, "one/too/many", 0, false, 1, &rt, &ask), ROUTE_SEND);
	assert_int_equal(decide(&rc, "one/too/many", 2, true, 1, &rt, &ask), ROUTE_SEND);
	assert_null(find(&rc, "one/too/many"));
	/* A new generation sweeps the old entries: the topic asks again. */
	assert_int_equal(decide(&rc, "one/too/many", 0, false, 2, &rt, &ask), ROUTE_SEND_ASK);
	assert_int_equal(hidx_count(&rc.idx), 1);
	routes_free(&rc);
}

static void the_entry_bound_sweeps_older_generations_then_refuses_new_topics(void **state)
{
	struct route_cache rc = { 0 };
	char topic[32];
	uint64_t last = 0, ask;
	size_t bytes = 0;

	for (unsigned i = 0; i < ROUTES_MAX; i++) {
		topic_name(topic, sizeof(topic), i);
		ask = routes_ask(&rc, T(topic), 1);
		assert_true(ask > last);
		last = ask;
		bytes += entry_bytes(topic, 0);
		if (i % 2)
			assert_true(routes_answer(&rc, T(topic), ask, 1, 1, true, three, 1));
		bytes += i % 2 ? sizeof(struct route_target) : 0;
	}
	assert_int_equal(hidx_count(&rc.idx), ROUTES_MAX);
	assert_int_equal(rc.bytes, bytes);
	assert_true(rc.bytes < ROUTES_MAX_BYTES);     /* the entry bound is the one met */

	/* Every entry is of the current generation: a new topic is not cached. */
	assert_int_equal(routes_ask(&rc, T("one/too/many"), 1), 0);
	assert_int_equal(routes_ask(&rc, T("one/too/many"), 1), 0);
	assert_null(find(&rc, "one/too/many"));
	assert_int_equal(hidx_count(&rc.idx), ROUTES_MAX);
	assert_int_equal(rc.bytes, bytes);
	/* A topic already there is asked again as before. */
	topic_name(topic, sizeof(topic), 5);
	last = routes_ask(&rc, T(topic), 1);
	assert_int_not_equal(last, 0);
	assert_int_equal(hidx_count(&rc.idx), ROUTES_MAX);

	/* A new generation: the sweep removes every entry of the old one. */
	ask = routes_ask(&rc, T("one/too/many"), 2);
	assert_true(ask > last);                    /* asks never restart */
	assert_int_equal(hidx_count(&rc.idx), 1);
	assert_int_equal(rc.bytes, entry_bytes("one/too/many", 0));
	assert_int_equal(find(&rc, "one/too/many")->kind, ROUTE_ASKED);
	for (unsigned i = 0; i < ROUTES_MAX; i += 511) {
		topic_name(topic, sizeof(topic), i);
		assert_null(find(&rc, topic));
	}
	/* The answer to an ask of an entry now gone is refused. */
	topic_name(topic, sizeof(topic), 5);
	assert_false(routes_answer(&rc, T(topic), last, 2, 2, true, three, 1));
	assert_null(find(&rc, topic));
	routes_free(&rc);

	/* Only the older generations go: half the entries asked or answered at 3. */
	for (unsigned i = 0; i < ROUTES_MAX; i++) {
		topic_name(topic, sizeof(topic), i);
		if (i % 2)
			make_local(&rc, topic, 3, three, 2);
		else
			assert_int_not_equal(routes_ask(&rc, T(topic), 2), 0);
	}
	assert_int_not_equal(routes_ask(&rc, T("one/too/many"), 3), 0);
	assert_int_equal(hidx_count(&rc.idx), ROUTES_MAX / 2 + 1);
	for (unsigned i = 0; i < ROUTES_MAX; i++) {
		topic_name(topic, sizeof(topic), i);
		if (i % 2)
			assert_int_equal(find(&rc, topic)->kind, ROUTE_LOCAL);
		else
			assert_null(find(&rc, topic));
	}
	routes_free(&rc);
}

static void the_byte_bound_sweeps_older_generations_then_refuses_new_topics(void **state)
{
	enum { LEN = 60000 };
	struct route_cache rc = { 0 };
	char *topic = malloc(LEN + 1);
	size_t entry = sizeof(struct route) + LEN;
	unsigned held = 0;

	assert_non_null(topic);
	memset(topic, 'x', LEN);
	topic[LEN] = '\0';
	/* As many long topics as the bytes take: far fewer than ROUTES_MAX. */
	for (unsigned i = 0; (held + 1) * entry <= ROUTES_MAX_BYTES; i++) {
		memcpy(topic, (char[]){ 'a' + i % 26, 'a' + i / 26 }, 2);
		assert_int_not_equal(routes_ask(&rc, (const uint8_t *)topic, LEN, 1), 0);
		held++;
		assert_int_equal(hidx_count(&rc.idx), held);
		assert_int_equal(rc.bytes, held * entry);
	}
	assert_true(held > 1 && held < ROUTES_MAX);
	assert_true(rc.bytes + entry > ROUTES_MAX_BYTES);

	memcpy(topic, "zz", 2);
	assert_int_equal(routes_ask(&rc, (const uint8_t *)topic, LEN, 1), 0);
	assert_int_equal(hidx_count(&rc.idx), held);
	assert_int_not_equal(routes_ask(&rc, (const uint8_t *)topic, LEN, 2), 0);
	assert_int_equal(hidx_count(&rc.idx), 1);
	assert_int_equal(rc.bytes, entry);
	assert_non_null(routes_find(&rc, (const uint8_t *)topic, LEN));
	memcpy(topic, "aa", 2);
	assert_null(routes_find(&rc, (const uint8_t *)topic, LEN));

	/* Targets count towards the bound: a short topic meets it past them. */
	routes_free(&rc);
	{
		/* Half an entry of room left once the targets are in. */
		uint32_t n = (uint32_t)((ROUTES_MAX_BYTES - entry / 2) / sizeof(struct route_target));
		struct route_target *t = calloc(n, sizeof(*t));

		assert_non_null(t);
		make_local(&rc, "big", 4, t, n);
		assert_int_equal(rc.bytes, entry_bytes("big", n));
		make_local(&rc, "fits", 4, three, 3);
		assert_int_equal(hidx_count(&rc.idx), 2);
		/* 60 KB more would be over: refused at 4, taken at 5 once "big" is swept. */
		assert_int_equal(routes_ask(&rc, (const uint8_t *)topic, LEN, 4), 0);
		assert_int_equal(hidx_count(&rc.idx), 2);
		assert_int_not_equal(routes_ask(&rc, (const uint8_t *)topic, LEN, 5), 0);
		assert_int_equal(hidx_count(&rc.idx), 1);
		assert_null(find(&rc, "big"));
		assert_int_equal(rc.bytes, entry);
		free(t);
	}
	routes_free(&rc);
	free(topic);
}

static void topics_sharing_a_prefix_are_distinct(void **state)
{
	static const char *topics[] = { "a", "a/", "a/b", "a/b/c", "a/bc", "ab" };
	enum { N = sizeof(topics) / sizeof(topics[0]) };
	struct route_cache rc = { 0 };

	for (uint32_t i = 0; i < N; i++)
		make_local(&rc, topics[i], 1, three, i % 3 + 1);
	assert_int_equal(hidx_count(&rc.idx), N);
	for (uint32_t i = 0; i < N; i++) {
		struct route *rt = find(&rc, topics[i]);

		assert_non_null(rt);
		assert_int_equal(rt->topic_len, strlen(topics[i]));
		assert_memory_equal(rt->topic, topics[i], rt->topic_len);
		assert_int_equal(rt->n_targets, i % 3 + 1);
	}
	assert_null(find(&rc, "a/b/"));
	assert_null(find(&rc, "a/b/c/d"));
	assert_null(find(&rc, ""));
	/* A prefix of a stored topic, given by length only. */
	assert_ptr_equal(routes_find(&rc, (const uint8_t *)"a/b/c", 3), find(&rc, "a/b"));
	routes_free(&rc);
}

static void topics_sharing_a_hash_or_a_bucket_are_distinct(void **state)
{
	/*
	 * Two topics of one length whose 32-bit hashes are equal under the
	 * all-zero key (found offline; a process draws a random one).
	 */
	static const uint8_t zero_key[KEYHASH_KEY_LEN];
	const char *a = "t/035879", *b = "t/061153";
	struct route_cache rc = { 0 };
	char c[16], d[16];
	uint32_t home;
	uint64_t ask_a, ask_b;

	keyhash_set_key(zero_key);
	assert_int_equal(hidx_hash_bytes(a, 8), hidx_hash_bytes(b, 8));
	ask_a = routes_ask(&rc, T(a), 1);
	assert_null(find(&rc, b));
	ask_b = routes_ask(&rc, T(b), 1);
	assert_int_equal(hidx_count(&rc.idx), 2);
	assert_ptr_not_equal(find(&rc, a), find(&rc, b));
	/* b's ask is the later one; a's answer is still a's. */
	assert_false(routes_answer(&rc, T(a), ask_b, 1, 1, true, three, 3));
	assert_true(routes_answer(&rc, T(a), ask_a, 1, 1, true, three, 3));
	assert_int_equal(find(&rc, a)->kind, ROUTE_LOCAL);
	assert_int_equal(find(&rc, b)->kind, ROUTE_ASKED);
	assert_true(routes_answer(&rc, T(b), ask_b, 1, 1, false, NULL, 0));
	assert_int_equal(find(&rc, a)->n_targets, 3);
	assert_int_equal(find(&rc, b)->kind, ROUTE_REMOTE);
	assert_memory_equal(find(&rc, b)->topic, b, 8);

	/* Different hashes, one home slot of the smallest index (16 slots). */
	home = hidx_hash_bytes(a, 8) & 15;
	for (unsigned i = 0, found = 0; found < 2; i++) {
		char *dst = found ? d : c;

		snprintf(dst, sizeof(c), "u/%u", i);
		if ((hidx_hash_bytes(dst, strlen(dst)) & 15) == home)
			found++;
	}
	assert_int_equal(hidx_slots(&rc.idx), 16);
	make_local(&rc, c, 1, three, 1);
	make_local(&rc, d, 1, three + 1, 1);
	assert_int_equal(hidx_count(&rc.idx), 4);
	assert_int_equal(hidx_slots(&rc.idx), 16);
	assert_int_equal(find(&rc, c)->targets[0].conn, three[0].conn);
	assert_int_equal(find(&rc, d)->targets[0].conn, three[1].conn);
	assert_int_equal(find(&rc, a)->n_targets, 3);
	assert_int_equal(find(&rc, b)->kind, ROUTE_REMOTE);
	routes_free(&rc);
}

static void free_empties_a_full_cache_which_then_serves_again(void **state)
{
	struct route_cache rc = { 0 };
	char topic[32];
	uint64_t last;

	for (unsigned i = 0; i < ROUTES_MAX; i++) {
		topic_name(topic, sizeof(topic), i);
		if (i % 3 == 0)
			make_local(&rc, topic, 1, three, 3);
		else if (i % 3 == 1)
			assert_true(routes_answer(&rc, T(topic), routes_ask(&rc, T(topic), 1), 1, 1,
						  false, NULL, 0));
		else
			routes_ask(&rc, T(topic), 1);
	}
	assert_int_equal(hidx_count(&rc.idx), ROUTES_MAX);
	last = routes_ask(&rc, T(topic), 1);
	routes_free(&rc);
	assert_int_equal(hidx_count(&rc.idx), 0);
	assert_int_equal(hidx_slots(&rc.idx), 0);
	assert_int_equal(rc.bytes, 0);
	assert_null(find(&rc, topic));
	/* Still usable, and its asks go on from where they were. */
	assert_true(routes_ask(&rc, T(topic), 1) > last);
	assert_int_equal(rc.bytes, entry_bytes(topic, 0));
	routes_free(&rc);
	routes_free(&rc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(find_on_an_empty_cache_is_null),
		cmocka_unit_test(ask_creates_an_asked_entry_with_increasing_asks),
		cmocka_unit_test(local_answer_to_the_last_ask_at_the_current_gen_is_taken),
		cmocka_unit_test(an_older_ask_takes_a_remote_answer_but_not_a_local_one),
		cmocka_unit_test(answer_at_another_gen_is_refused),
		cmocka_unit_test(answer_for_a_topic_not_asked_or_already_answered_is_refused),
		cmocka_unit_test(asking_again_turns_an_answered_entry_asked_and_drops_its_targets),
		cmocka_unit_test(decide_asks_for_a_topic_without_a_route),
		cmocka_unit_test(decide_delivers_here_on_a_valid_local_route),
		cmocka_unit_test(decide_asks_again_once_the_generation_moved),
		cmocka_unit_test(decide_sends_retained_and_qos2_to_the_router_and_takes_the_route_back),
		cmocka_unit_test(decide_sends_anything_on_a_valid_remote_route_without_asking),
		cmocka_unit_test(decide_sends_without_asking_when_the_cache_is_full),
		cmocka_unit_test(the_entry_bound_sweeps_older_generations_then_refuses_new_topics),
		cmocka_unit_test(the_byte_bound_sweeps_older_generations_then_refuses_new_topics),
		cmocka_unit_test(topics_sharing_a_prefix_are_distinct),
		cmocka_unit_test(topics_sharing_a_hash_or_a_bucket_are_distinct),
		cmocka_unit_test(free_empties_a_full_cache_which_then_serves_again),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
