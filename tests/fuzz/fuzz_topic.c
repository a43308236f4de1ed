/*
 * fuzz_topic.c - libFuzzer harness for topic.h and retain.h.
 *
 * Input: filter NUL topic NUL script. The filter and topic go through the
 * validators (the filter also as a shared subscription's); when both are
 * valid, topic_matches, a level-array reference matcher, the trie and the
 * retained store must all agree. The script is
 * a list of records [op][len][len bytes] that subscribe, unsubscribe and
 * retain against a trie and a store, checked step by step against a plain
 * array model; afterwards everything is removed again and the memory in
 * use must be back where it started.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "retain.h"
#include "topic.h"

#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_SUBS 8
#define FUZZ_MODEL 512
#define FUZZ_RETAIN_COUNT 6
#define FUZZ_RETAIN_BYTES 96

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

struct fuzz_str {
	const char *p;
	size_t len;
};

struct fuzz_sub {
	struct fuzz_str filter;
	unsigned sub;
	uint8_t qos;
};

struct fuzz_msg {
	struct fuzz_str topic;
	size_t payload_len;
	uint8_t qos;
};

#ifdef FUZZ_ASAN
size_t __sanitizer_get_current_allocated_bytes(void);

static size_t fuzz_allocated(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
/* Without ASan (coverage builds) the memory check is a no-op. */
static size_t fuzz_allocated(void)
{
	return 0;
}
#endif

static char fuzz_subscribers[FUZZ_SUBS];
static const uint8_t fuzz_payload[32] = "0123456789abcdefghijklmnopqrstu";

/* ---- input ---- */

static struct fuzz_str fuzz_take_until_nul(const uint8_t **p, size_t *left)
{
	const uint8_t *nul = memchr(*p, 0, *left);
	struct fuzz_str s = { (const char *)*p, nul ? (size_t)(nul - *p) : *left };

	*p += s.len + (nul ? 1 : 0);
	*left -= s.len + (nul ? 1 : 0);
	return s;
}

/* ---- reference matcher: the spec's rules on arrays of levels ---- */

static struct fuzz_str *fuzz_split(struct fuzz_str s, size_t *n)
{
	size_t count = 1, start = 0, k = 0;
	struct fuzz_str *v;

	for (size_t i = 0; i < s.len; i++)
		count += s.p[i] == '/';
	v = malloc(count * sizeof(*v));
	CHECK(v);
	for (size_t i = 0; i <= s.len; i++) {
		if (i < s.len && s.p[i] != '/')
			continue;
		v[k].p = s.p + start;
		v[k].len = i - start;
		k++;
		start = i + 1;
	}
	*n = count;
	return v;
}

static bool fuzz_level_is(struct fuzz_str l, char c)
{
	return l.len == 1 && l.p[0] == c;
}

static bool fuzz_ref_match(struct fuzz_str filter, struct fuzz_str topic)
{
	size_t nf, nt;
	struct fuzz_str *f = fuzz_split(filter, &nf), *t = fuzz_split(topic, &nt);
	bool match = nf == nt;

	if (topic.len > 0 && topic.p[0] == '$' &&
	    (fuzz_level_is(f[0], '+') || fuzz_level_is(f[0], '#'))) {
		match = false;
		goto out;
	}
	for (size_t i = 0; i < nf; i++) {
		if (fuzz_level_is(f[i], '#')) {
			match = true;
			goto out;
		}
		if (i >= nt || (!fuzz_level_is(f[i], '+') &&
				(f[i].len != t[i].len || memcmp(f[i].p, t[i].p, f[i].len) != 0))) {
			match = false;
			goto out;
		}
	}
out:
	free(f);
	free(t);
	return match;
}

/* ---- callbacks ---- */

struct fuzz_calls {
	size_t n[FUZZ_SUBS];
	unsigned qos_sum[FUZZ_SUBS];
	size_t total;
};

static void fuzz_on_sub(void *subscriber, uint8_t qos, void *arg)
{
	struct fuzz_calls *c = arg;
	size_t i = (size_t)((char *)subscriber - fuzz_subscribers);

	CHECK(i < FUZZ_SUBS);
	c->n[i]++;
	c->qos_sum[i] += qos;
	c->total++;
}

static void fuzz_on_retained(const struct retained *m, void *arg)
{
	CHECK(m->payload_len > 0 && m->qos <= 2);
	(*(size_t *)arg)++;
}

/* ---- part 1: one filter against one topic ---- */

static void fuzz_validators(struct fuzz_str f, struct fuzz_str t)
{
	bool fv = topic_filter_valid(f.p, f.len, 0, 0);
	bool tv = topic_name_valid(t.p, t.len, 0, 0);

	/* Limits only ever take validity away; a valid name is a valid filter. */
	if (topic_filter_valid(f.p, f.len, 3, 12))
		CHECK(fv);
	if (topic_name_valid(t.p, t.len, 3, 12))
		CHECK(tv);
	if (tv)
		CHECK(topic_filter_valid(t.p, t.len, 0, 0));
	if (t.len > 0 && !memchr(t.p, '+', t.len) && !memchr(t.p, '#', t.len))
		CHECK(tv);
}

/*
 * A shared subscription's filter: a good one splits into a name without
 * '/', '+' or '#' and a valid filter, which are the string itself; one
 * that is not shared does not start with the prefix.
 */
static void fuzz_share(struct fuzz_str f)
{
	struct topic_share_parts p;

	switch (topic_share_parse(f.p, f.len, &p)) {
	case TOPIC_SHARE_NONE:
		CHECK(f.len < TOPIC_SHARE_PREFIX_LEN ||
		      memcmp(f.p, TOPIC_SHARE_PREFIX, TOPIC_SHARE_PREFIX_LEN) != 0);
		break;
	case TOPIC_SHARE_OK:
		CHECK(p.name == f.p + TOPIC_SHARE_PREFIX_LEN && p.name_len > 0);
		CHECK(!memchr(p.name, '/', p.name_len) && !memchr(p.name, '+', p.name_len) &&
		      !memchr(p.name, '#', p.name_len));
		CHECK(p.filter == p.name + p.name_len + 1);
		CHECK(TOPIC_SHARE_PREFIX_LEN + p.name_len + 1 + p.filter_len == f.len);
		CHECK(topic_filter_valid(p.filter, p.filter_len, 0, 0));
		break;
	case TOPIC_SHARE_BAD:
		CHECK(f.len >= TOPIC_SHARE_PREFIX_LEN);
		break;
	}
}

static void fuzz_pair(struct fuzz_str f, struct fuzz_str t)
{
	struct topic_trie *trie;
	struct retain_store *rs;
	struct fuzz_calls calls = { .total = 0 };
	size_t retained = 0;
	bool want;

	fuzz_validators(f, t);
	fuzz_share(f);
	if (!topic_filter_valid(f.p, f.len, 0, 0) || !topic_name_valid(t.p, t.len, 0, 0))
		return;
	want = topic_matches(f.p, f.len, t.p, t.len);
	CHECK(want == fuzz_ref_match(f, t));
	CHECK(topic_matches(t.p, t.len, t.p, t.len));

	trie = topic_trie_new();
	CHECK(trie);
	CHECK(topic_trie_subscribe(trie, f.p, f.len, &fuzz_subscribers[0], 1) == 1);
	topic_trie_match(trie, t.p, t.len, fuzz_on_sub, &calls);
	CHECK(calls.total == (want ? 1u : 0u));
	topic_trie_free(&trie);
	CHECK(!trie);

	rs = retain_new(0, 0);
	CHECK(rs);
	CHECK(retain_put(rs, t.p, t.len, (const uint8_t *)"x", 1, 1) == RETAIN_STORED);
	retain_match(rs, f.p, f.len, fuzz_on_retained, &retained);
	CHECK(retained == (want ? 1u : 0u));
	retained = 0;
	retain_match(rs, t.p, t.len, fuzz_on_retained, &retained);
	CHECK(retained == 1);
	retain_free(&rs);
	CHECK(!rs);
}

/* ---- part 2: scripted subscribe/unsubscribe/retain against a model ---- */

struct fuzz_model {
	struct fuzz_sub subs[FUZZ_MODEL];
	size_t nsubs;
	struct fuzz_msg msgs[FUZZ_MODEL];
	size_t nmsgs, bytes;
};

static bool fuzz_str_eq(struct fuzz_str a, struct fuzz_str b)
{
	return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}

static struct fuzz_sub *fuzz_model_sub(struct fuzz_model *m, struct fuzz_str f, unsigned sub)
{
	for (size_t i = 0; i < m->nsubs; i++)
		if (m->subs[i].sub == sub && fuzz_str_eq(m->subs[i].filter, f))
			return &m->subs[i];
	return NULL;
}

static struct fuzz_msg *fuzz_model_msg(struct fuzz_model *m, struct fuzz_str t)
{
	for (size_t i = 0; i < m->nmsgs; i++)
		if (fuzz_str_eq(m->msgs[i].topic, t))
			return &m->msgs[i];
	return NULL;
}

static void fuzz_op_subscribe(struct topic_trie *trie, struct fuzz_model *m,
			      struct fuzz_str f, unsigned sub, uint8_t qos)
{
	struct fuzz_sub *s = fuzz_model_sub(m, f, sub);
	int rc;

	if (!s && m->nsubs == FUZZ_MODEL)
		return;
	rc = topic_trie_subscribe(trie, f.p, f.len, &fuzz_subscribers[sub], qos);
	if (s) {
		CHECK(rc == 0);
		s->qos = qos;
		return;
	}
	CHECK(rc == 1);
	m->subs[m->nsubs++] = (struct fuzz_sub){ f, sub, qos };
}

static void fuzz_op_unsubscribe(struct topic_trie *trie, struct fuzz_model *m,
				struct fuzz_str f, unsigned sub)
{
	struct fuzz_sub *s = fuzz_model_sub(m, f, sub);
	int rc = topic_trie_unsubscribe(trie, f.p, f.len, &fuzz_subscribers[sub]);

	CHECK(rc == (s ? 1 : 0));
	if (s)
		*s = m->subs[--m->nsubs];
}

static void fuzz_op_retain(struct retain_store *rs, struct fuzz_model *m, struct fuzz_str t,
			   size_t payload_len, uint8_t qos)
{
	struct fuzz_msg *msg = fuzz_model_msg(m, t);
	size_t need = t.len + payload_len;
	size_t others = m->bytes - (msg ? msg->topic.len + msg->payload_len : 0);
	int want, rc;

	if (payload_len == 0)
		want = RETAIN_CLEARED;
	else if (!msg && m->nmsgs >= FUZZ_RETAIN_COUNT)
		want = RETAIN_FULL;
	else if (others + need > FUZZ_RETAIN_BYTES)
		want = RETAIN_FULL;
	else
		want = RETAIN_STORED;
	rc = retain_put(rs, t.p, t.len, fuzz_payload, payload_len, qos);
	CHECK(rc == want);
	if (want == RETAIN_CLEARED && msg) {
		m->bytes -= msg->topic.len + msg->payload_len;
		*msg = m->msgs[--m->nmsgs];
	} else if (want == RETAIN_STORED) {
		if (!msg)
			msg = &m->msgs[m->nmsgs++];
		*msg = (struct fuzz_msg){ t, payload_len, qos };
		m->bytes = others + need;
	}
	CHECK(retain_count(rs) == m->nmsgs);
	CHECK(retain_bytes(rs) == m->bytes);
}

/* The trie and the store must report exactly what the model says for topic. */
static void fuzz_check_topic(const struct topic_trie *trie, const struct fuzz_model *m,
			     struct fuzz_str t)
{
	struct fuzz_calls got = { .total = 0 }, want = { .total = 0 };

	if (!topic_name_valid(t.p, t.len, 0, 0))
		return;
	topic_trie_match(trie, t.p, t.len, fuzz_on_sub, &got);
	for (size_t i = 0; i < m->nsubs; i++) {
		const struct fuzz_sub *s = &m->subs[i];

		if (!topic_matches(s->filter.p, s->filter.len, t.p, t.len))
			continue;
		want.n[s->sub]++;
		want.qos_sum[s->sub] += s->qos;
		want.total++;
	}
	CHECK(memcmp(&got, &want, sizeof(got)) == 0);
}

static void fuzz_check_filter(const struct retain_store *rs, const struct fuzz_model *m,
			      struct fuzz_str f)
{
	size_t got = 0, want = 0;

	if (!topic_filter_valid(f.p, f.len, 0, 0))
		return;
	retain_match(rs, f.p, f.len, fuzz_on_retained, &got);
	for (size_t i = 0; i < m->nmsgs; i++)
		want += topic_matches(f.p, f.len, m->msgs[i].topic.p, m->msgs[i].topic.len);
	CHECK(got == want);
}

/* "a/b/c" -> "+/+/+": a filter that must find every retained topic of that depth. */
static struct fuzz_str fuzz_plusify(struct fuzz_str t, char *buf, size_t cap)
{
	size_t o = 0;

	CHECK(cap >= 2 * t.len + 1);
	buf[o++] = '+';
	for (size_t i = 0; i < t.len; i++) {
		if (t.p[i] != '/')
			continue;
		buf[o++] = '/';
		buf[o++] = '+';
	}
	return (struct fuzz_str){ buf, o };
}

static void fuzz_script(const uint8_t *p, size_t left, struct fuzz_str f, struct fuzz_str t)
{
	static struct fuzz_model m;
	struct topic_trie *trie = topic_trie_new();
	struct retain_store *rs = retain_new(FUZZ_RETAIN_COUNT, FUZZ_RETAIN_BYTES);
	size_t base;

	CHECK(trie && rs);
	memset(&m, 0, sizeof(m));
	base = fuzz_allocated();
	while (left >= 2) {
		uint8_t op = p[0];
		size_t len = p[1] < left - 2 ? p[1] : left - 2;
		struct fuzz_str s = { (const char *)p + 2, len };
		unsigned sub = (op >> 1) & 7;
		uint8_t qos = (op >> 4) & 3;

		p += 2 + len;
		left -= 2 + len;
		if (op & 0x80) {
			if (topic_name_valid(s.p, s.len, 0, 0))
				fuzz_op_retain(rs, &m, s, (op & 1) ? 0 : (size_t)(qos * 7 + sub),
					       qos % 3);
			continue;
		}
		if (!topic_filter_valid(s.p, s.len, 0, 0))
			continue;
		if (op & 1)
			fuzz_op_unsubscribe(trie, &m, s, sub);
		else
			fuzz_op_subscribe(trie, &m, s, sub, qos % 3);
		CHECK(topic_trie_count(trie) == m.nsubs);
	}

	fuzz_check_topic(trie, &m, t);
	fuzz_check_filter(rs, &m, f);
	fuzz_check_filter(rs, &m, (struct fuzz_str){ "#", 1 });
	for (size_t i = 0; i < m.nsubs; i++) {
		fuzz_check_topic(trie, &m, m.subs[i].filter);
		fuzz_check_filter(rs, &m, m.subs[i].filter);
	}
	for (size_t i = 0; i < m.nmsgs; i++) {
		char buf[2 * 255 + 1];

		fuzz_check_topic(trie, &m, m.msgs[i].topic);
		fuzz_check_filter(rs, &m, m.msgs[i].topic);
		fuzz_check_filter(rs, &m, fuzz_plusify(m.msgs[i].topic, buf, sizeof(buf)));
	}

	/* Take everything away: the memory must come back, not just the counts. */
	while (m.nsubs > 0)
		fuzz_op_unsubscribe(trie, &m, m.subs[m.nsubs - 1].filter, m.subs[m.nsubs - 1].sub);
	while (m.nmsgs > 0)
		fuzz_op_retain(rs, &m, m.msgs[m.nmsgs - 1].topic, 0, 0);
	CHECK(topic_trie_count(trie) == 0);
	CHECK(fuzz_allocated() == base);
	topic_trie_free(&trie);
	retain_free(&rs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data;
	size_t left = size;
	struct fuzz_str f = fuzz_take_until_nul(&p, &left);
	struct fuzz_str t = fuzz_take_until_nul(&p, &left);

	fuzz_pair(f, t);
	fuzz_script(p, left, f, t);
	return 0;
}
