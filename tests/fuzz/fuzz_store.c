/*
 * fuzz_store.c - libFuzzer harness for a stored session's value: the
 * decoders of daemon/store.c, format 8's and the older formats'.
 *
 * Input: the value, put behind the store's back as session 1's in a
 * store opened once, then read with store_each_session(). Whatever the
 * bytes, the session is decoded or skipped as corrupt, never read out of
 * bounds: every string and byte range of a decoded one is touched, its
 * remotes must end with their NUL, and a will's QoS and retain flag must
 * be what a CONNECT can carry.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "../../daemon/store_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) abort(); } while (0)

static volatile uint8_t sink;

static void touch(const void *p, size_t len)
{
	const uint8_t *b = p;

	CHECK(len == 0 || p != NULL);
	for (size_t i = 0; i < len; i++)
		sink ^= b[i];
}

static void touch_connect(const struct store_connect *c)
{
	touch(c->remote, strlen(c->remote) + 1);
	touch(c->user, c->user_len);
	touch(c->will_topic, c->will_topic_len);
	touch(c->will_payload, c->will_payload_len);
	touch(c->will_props, c->will_props_len);
	CHECK(c->will_qos <= 2 && c->will_retain <= 1);
}

static void on_session(void *arg, const struct store_session *s)
{
	(*(int *)arg)++;
	CHECK(s->sid == 1);
	touch(s->client_id, s->client_id_len);
	touch(s->remote, strlen(s->remote) + 1);
	touch(s->user, s->user_len);
	touch(s->token.rules, s->token.len);
	touch(s->qos2_ids, (size_t)s->n_qos2_ids * sizeof(*s->qos2_ids));
	if (s->online)
		touch_connect(&s->cx);
	if (s->pending) {
		touch_connect(&s->pend);
		touch(s->pend_token.rules, s->pend_token.len);
	}
	if (s->will_held)
		touch_connect(&s->will);
}

static struct store *st;
static char dir[] = "/tmp/iotd-fuzz-store-XXXXXX";

static void store_gone(void)
{
	store_close(&st);
	store_remove(dir);
}

static struct store *store_once(void)
{
	char err[256];

	if (st)
		return st;
	log_set_level(LOG_LVL_ERROR);
	if (!mkdtemp(dir))
		abort();
	st = store_open(dir, STORE_MEMORY, (size_t)64 << 20, err, sizeof(err));
	if (!st) {
		fprintf(stderr, "fuzz_store: %s\n", err);
		abort();
	}
	atexit(store_gone);
	return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct store *st = store_once();
	MDB_val k = mval("\0\0\0\1", 4), v = mval(data, size);
	int n = 0;

	if (size == 0 || size > 4096)
		return 0;
	store_session_del(st, 1);    /* begins the turn's transaction */
	CHECK(st->txn && mdb_put(st->txn, st->sessions, &k, &v, 0) == 0);
	CHECK(store_each_session(st, on_session, &n) == 0);
	CHECK(n <= 1);
	store_abort(st);
	return 0;
}
