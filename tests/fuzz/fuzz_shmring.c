/*
 * fuzz_shmring.c - libFuzzer harness for the ring against a hostile peer.
 *
 * Bit 0x40 of the first byte picks the mode.
 *
 * Still memory: the consumer on whatever a hostile producer (or a faulty
 * predecessor) left. Input: a selector (bits 0-1: the ring's size), the
 * consumer's tail, the producer's head (bit 0x80: any 64 bits; else near
 * the tail), c_sleep, p_wait, then data[]. Draining it must terminate,
 * never touch a byte outside data[] (allocated at exactly its size, so
 * ASan sees any overread), hand out only records within the payload
 * limit, and end either caught up with the head (EAGAIN) or broken
 * (EBADMSG). Once discarded, a producer resuming must get its records
 * through intact (bit 0x20: a successor starting at the consumer's tail).
 *
 * A race: an honest producer and consumer take turns with a hostile
 * writer, each step one operation the input picks (reserve, commit, peek,
 * next, release, sleep, wake, an overwrite of a byte range of data[], of
 * the head or of the tail, discard, resync). A model of what the producer
 * wrote says which records are still whole; until the consumer meets
 * something hostile, every record must come out intact and in order, the
 * wake-ups must be neither lost nor doubled, and the producer must see
 * room exactly as the tail says. Whatever happens, a record the consumer
 * returned does not change under it, and after the hostile writer stops,
 * a discard and a resync make the ring carry records intact again.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shmring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HDR ((uint64_t)sizeof(struct shmring_rec))
#define MAX_OPS 4096

struct fuzz_in {
	const uint8_t *p;
	size_t left;
};

static uint64_t fuzz_take(struct fuzz_in *in, size_t n)
{
	uint64_t v = 0;

	n = n < in->left ? n : in->left;
	memcpy(&v, in->p, n);
	in->p += n;
	in->left -= n;
	return v;
}

/* n bytes of input into dst, zeros where the input has run out. */
static void fuzz_bytes(struct fuzz_in *in, uint8_t *dst, size_t n)
{
	size_t k = n < in->left ? n : in->left;

	memcpy(dst, in->p, k);
	memset(dst + k, 0, n - k);
	in->p += k;
	in->left -= k;
}

/* The three parts, each allocated at exactly its size: ASan sees any overread. */
struct fring {
	struct shmring r;
	struct shmring_pctl *pctl;
	struct shmring_cctl *cctl;
	uint8_t *data;
	size_t size;
};

static bool fring_new(struct fring *g, size_t size)
{
	g->pctl = calloc(1, sizeof(*g->pctl));
	g->cctl = calloc(1, sizeof(*g->cctl));
	g->data = calloc(1, size);
	g->size = size;
	if (!g->pctl || !g->cctl || !g->data)
		return false;
	shmring_view(&g->r, g->pctl, g->cctl, g->data, size);
	return true;
}

static void fring_free(struct fring *g)
{
	free(g->pctl);
	free(g->cctl);
	free(g->data);
}

static volatile uint8_t fuzz_sink;

/* A record handed out: the private copy, within the limit, every byte readable. */
static void check_rec(const struct fring *g, const struct shmring_rec *rec)
{
	const uint8_t *pl = shmring_payload(rec);
	uint8_t sum = 0;

	if ((uintptr_t)rec < (uintptr_t)g->data + g->size &&
	    (uintptr_t)pl + rec->len > (uintptr_t)g->data)
		abort();                 /* not a copy: data[] itself */
	if (rec->len > shmring_max_payload(g->size) || rec->type == SHMRING_PAD)
		abort();
	for (uint32_t i = 0; i < rec->len; i++)
		sum += pl[i];
	fuzz_sink = sum;
}

static uint8_t content(uint64_t seq, uint32_t i)
{
	return (uint8_t)(seq * 31 + i * 7 + 1);
}

/* The records' content the producer writes and the consumer checks. */
static void fill(uint8_t *pl, uint64_t seq, uint32_t len)
{
	for (uint32_t i = 0; i < len; i++)
		pl[i] = content(seq, i);
}

static bool intact(const struct shmring_rec *rec, uint64_t seq, uint16_t type, uint32_t len)
{
	const uint8_t *pl = shmring_payload(rec);

	if (rec->type != type || rec->len != len || rec->flags != (uint16_t)seq)
		return false;
	for (uint32_t i = 0; i < len; i++)
		if (pl[i] != content(seq, i))
			return false;
	return true;
}

/* ---- still memory -------------------------------------------------------- */

static void load_state(struct fring *g, uint8_t sel, struct fuzz_in *in)
{
	uint64_t tail = fuzz_take(in, 8);
	/* Mostly head near tail, as in a live ring; sometimes anything at all. */
	uint64_t head = sel & 0x80 ? fuzz_take(in, 8) : tail + (uint64_t)(int64_t)(int32_t)fuzz_take(in, 4);

	atomic_store(&g->cctl->tail, tail);
	atomic_store(&g->pctl->head, head);
	atomic_store(&g->cctl->c_sleep, (uint32_t)fuzz_take(in, 1));
	atomic_store(&g->pctl->p_wait, (uint32_t)fuzz_take(in, 1));
	fuzz_bytes(in, g->data, in->left < g->size ? in->left : g->size);
}

static void drain(struct fring *g, struct shmring_consumer *c)
{
	const struct shmring_rec *rec;
	uint64_t n = 0;

	while ((rec = shmring_peek(c))) {
		check_rec(g, rec);
		shmring_next(c);
		if (++n > g->size / HDR)
			abort();         /* more records than fit: going round in circles */
	}
	if (errno == EAGAIN) {
		/* Caught up with a head it could check. */
		if (c->broken || c->tail != atomic_load(&g->pctl->head))
			abort();
	} else if (errno != EBADMSG || !c->broken) {
		abort();
	}
}

/* After the drain: discarded, the ring must carry a producer's records intact. */
static void resume(struct fring *g, struct shmring_consumer *c, uint8_t sel)
{
	struct shmring_producer p;
	uint32_t len[4];

	shmring_discard(c);
	if (atomic_load(&g->pctl->head) % SHMRING_ALIGN) {
		/* No record boundary to skip to: broken it stays. */
		if (!c->broken || shmring_peek(c) || errno != EBADMSG)
			abort();
		return;
	}
	if (c->broken || c->tail != atomic_load(&g->pctl->head))
		abort();
	/*
	 * The counters are 64 bits so that they never wrap in a ring's life;
	 * a producer resuming this close to the top would wrap them.
	 */
	if (UINT64_MAX - c->tail < 2 * g->size)
		return;
	shmring_release(c);
	if (!shmring_prepare_sleep(c))
		abort();
	shmring_awake(c);
	if (sel & 0x20) {
		shmring_producer_attach_at_tail(&p, &g->r);
		shmring_consumer_resync(c);
	} else if (!shmring_producer_attach(&p, &g->r)) {
		abort();                 /* the tail is the head: possible */
	}
	for (int i = 0; i < 4; i++) {
		uint8_t *pl;

		len[i] = (uint32_t)((sel * 37u + i * 1000u) % (g->size / 8));
		pl = shmring_reserve(&p, (uint16_t)(i + 1), (uint16_t)i, len[i]);
		if (!pl)
			abort();         /* the ring is empty: 4 records of size/8 fit */
		fill(pl, (uint64_t)i, len[i]);
		shmring_commit(&p);
		if (i == 1) {            /* the consumer restarts: 0 and 1 are stale */
			shmring_discard(c);
			shmring_release(c);
		}
	}
	for (int i = 2; i < 4; i++) {
		const struct shmring_rec *rec = shmring_peek(c);

		if (!rec || !intact(rec, (uint64_t)i, (uint16_t)(i + 1), len[i]))
			abort();
		shmring_next(c);
	}
	if (shmring_peek(c) || errno != EAGAIN)
		abort();
}

static void still_memory(uint8_t sel, struct fuzz_in *in)
{
	struct fring g;
	struct shmring_consumer c;

	if (!fring_new(&g, (size_t)4096 << (sel & 3)))
		goto out;
	load_state(&g, sel, in);
	if (!shmring_consumer_attach(&c, &g.r) && !c.broken)
		abort();
	drain(&g, &c);
	shmring_release(&c);
	/* Empty or broken: either way nothing to read, safe to sleep. */
	if (!shmring_prepare_sleep(&c))
		abort();
	shmring_awake(&c);
	resume(&g, &c, sel);
	shmring_consumer_detach(&c);
out:
	fring_free(&g);
}

/* ---- a race with a hostile writer ---------------------------------------- */

/* A record (or PAD) the producer wrote, from the consumer's position on. */
struct mrec {
	uint64_t pos, size;          /* counter where it starts, bytes it takes */
	uint64_t seq;
	uint32_t len;
	uint16_t type;
	bool pad;
	bool hdr_bad;                /* its header was overwritten */
	bool body_bad;               /* its payload was overwritten */
};

#define MODEL_MAX 2048               /* > records of 8 bytes in the largest ring */

struct model {
	struct fring g;
	struct shmring_producer p;
	struct shmring_consumer c;
	struct mrec q[MODEL_MAX];    /* in ring order: unread, then reserved */
	unsigned first, n;
	uint64_t seq;
	bool synced;                 /* what the consumer reads is predictable */
	bool p_may_break;            /* the producer may have seen an impossible tail */
	uint64_t honest_tail;        /* what the consumer last stored */
	bool peeked;                 /* a record peeked, not yet stepped past */
	const struct shmring_rec *copy; /* that record, and what it held when peeked */
	size_t snap_len;
	uint8_t snap[8 + 65536];
	bool asleep, woken;          /* c_sleep: a sleep announced; answered */
	bool waiting, p_woken;       /* p_wait: a wait announced; answered */
};

static struct mrec *front(struct model *m)
{
	return m->n ? &m->q[m->first] : NULL;
}

static void pop(struct model *m)
{
	m->first = (m->first + 1) % MODEL_MAX;
	m->n--;
}

static void push(struct model *m, struct mrec e)
{
	if (m->n == MODEL_MAX)
		abort();                 /* more reserved than the ring holds */
	m->q[(m->first + m->n++) % MODEL_MAX] = e;
}

/* The consumer met something hostile: from now on only the bounds are checked. */
static void unsync(struct model *m)
{
	m->synced = false;
	m->p_may_break = true;       /* it may release a tail no producer can accept */
}

/* Unsynced, records below the published head may be overwritten by anybody: forget them. */
static void prune(struct model *m)
{
	while (m->n && front(m)->pos < m->p.published)
		pop(m);
}

/* The record a consumer peeked is its own copy: nothing done to data[] reaches it. */
static void check_copy(const struct model *m)
{
	if (m->copy && memcmp(m->copy, m->snap, m->snap_len) != 0)
		abort();
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

static void op_reserve(struct model *m, uint8_t op, struct fuzz_in *in)
{
	struct fring *g = &m->g;
	uint16_t v = (uint16_t)fuzz_take(in, 2);
	uint32_t max = (uint32_t)shmring_max_payload(g->size);
	uint32_t len = v & 0x8000 ? v % (max + 1) : v % 64;
	uint64_t tail = atomic_load(&g->cctl->tail), before = m->p.head, size, to_end, need;
	bool was_broken = m->p.broken, room;
	uint16_t type = (uint16_t)(1 + (op >> 4));
	uint8_t *pl;

	if (tail != m->honest_tail) {
		/* A tail the consumer did not write: the producer may overwrite unread records. */
		m->p_may_break = true;
		if (m->synced)
			unsync(m);
	}
	size = (HDR + len + 7) & ~(uint64_t)7;
	to_end = g->size - (before & (g->size - 1));
	need = size > to_end ? to_end + size : size;
	/* Never more than a ring past the tail, whatever was reserved before. */
	room = tail <= before && before - tail <= g->size && g->size - (before - tail) >= need;
	pl = shmring_reserve(&m->p, type, (uint16_t)m->seq, len);
	if (!pl) {
		if (errno == EPROTO) {
			if (!m->p_may_break || !m->p.broken)
				abort();
			return;
		}
		/* Full exactly when the tail it read says so. */
		if (errno != EAGAIN || was_broken || room)
			abort();
		m->waiting = true;       /* a new wait each time */
		m->p_woken = false;
		return;
	}
	if (was_broken || !room)
		abort();
	m->waiting = false;
	if (m->p.head - before > size)
		push(m, (struct mrec){ .pos = before, .size = m->p.head - before - size, .pad = true });
	push(m, (struct mrec){ .pos = m->p.head - size, .size = size, .seq = m->seq, .len = len,
			       .type = type });
	fill(pl, m->seq++, len);
}

static void op_commit(struct model *m)
{
	bool fresh = m->p.head != m->p.published;
	bool wake = shmring_commit(&m->p);

	if (!fresh) {
		if (wake)
			abort();
		return;
	}
	/* c_sleep is written by the consumer alone: the answer is exact. */
	if (wake != (m->asleep && !m->woken))
		abort();
	if (wake)
		m->woken = true;
}

/*
 * PADs the consumer stepped over, and records whose rewritten header it
 * took for one: either may have led it anywhere.
 */
static void skip_pads(struct model *m)
{
	struct mrec *e;

	while (m->synced && (e = front(m)) && (e->pad || e->hdr_bad) && e->pos < m->c.tail) {
		if (e->hdr_bad)
			unsync(m);
		pop(m);
	}
}

/* The consumer is about to read the head: one it did not get from the producer unsyncs it. */
static void head_read(struct model *m)
{
	if (m->synced && atomic_load(&m->g.pctl->head) != m->p.published)
		unsync(m);
}

static void op_peek(struct model *m)
{
	const struct shmring_rec *rec;
	struct mrec *e;

	head_read(m);
	rec = shmring_peek(&m->c);
	m->copy = NULL;
	if (rec) {
		check_rec(&m->g, rec);
		m->copy = rec;
		m->snap_len = HDR + rec->len;
		memcpy(m->snap, rec, m->snap_len);
		skip_pads(m);
		if (!m->synced)
			return;
		e = front(m);
		if (e && e->pos == m->c.tail && e->hdr_bad) {
			unsync(m);       /* a rewritten header, a PAD's too, reads as anything */
			return;
		}
		if (!e || e->pad || e->pos != m->c.tail || e->pos + e->size > m->p.published)
			abort();         /* a record the producer did not publish there */
		if (rec->type != e->type || rec->len != e->len || rec->flags != (uint16_t)e->seq)
			abort();
		if (!e->body_bad && !intact(rec, e->seq, e->type, e->len))
			abort();
		m->peeked = true;
		return;
	}
	m->peeked = false;
	if (errno == EAGAIN) {
		if (m->c.broken)
			abort();
		skip_pads(m);
		/* Everything published was read: nothing honest was skipped. */
		if (m->synced && m->c.tail != m->p.published)
			abort();
	} else if (errno == EBADMSG) {
		if (!m->c.broken)
			abort();
		skip_pads(m);
		/* Only what the hostile writer touched may break an honest ring. */
		if (m->synced && !((e = front(m)) && e->hdr_bad))
			abort();
		unsync(m);
	} else if (errno != ENOMEM) {
		abort();
	}
}

static void op_next(struct model *m)
{
	shmring_next(&m->c);
	if (m->synced && m->peeked)
		pop(m);
	m->peeked = false;
	m->copy = NULL;
}

static void op_release(struct model *m)
{
	bool stores = atomic_load(&m->g.cctl->tail) != m->c.tail;
	bool wake = shmring_release(&m->c);

	m->honest_tail = m->c.tail;
	/* p_wait is written by the producer alone: the answer is exact. */
	if (wake != (stores && m->waiting && !m->p_woken))
		abort();
	if (wake)
		m->p_woken = true;
}

static void op_sleep(struct model *m)
{
	bool broken = m->c.broken, safe;

	head_read(m);
	safe = shmring_prepare_sleep(&m->c);
	if (broken) {
		if (!safe)
			abort();
		return;                  /* nothing written: the caller must repair first */
	}
	m->asleep = safe;            /* a new value either way */
	m->woken = false;
	/* Asleep exactly when everything published was read. */
	if (m->synced && safe != (m->c.tail == m->p.published))
		abort();
}

static void op_awake(struct model *m)
{
	shmring_awake(&m->c);
	m->asleep = false;
}

static void op_overwrite_data(struct model *m, struct fuzz_in *in)
{
	struct fring *g = &m->g;
	uint64_t off = fuzz_take(in, 2) % g->size;
	uint64_t n = fuzz_take(in, 1) + 1;

	if (n > g->size - off)
		n = g->size - off;
	fuzz_bytes(in, g->data + off, (size_t)n);
	for (unsigned k = 0; k < m->n; k++) {
		struct mrec *e = &m->q[(m->first + k) % MODEL_MAX];
		uint64_t at = e->pos & (g->size - 1);

		if (overlaps(at, HDR, off, n))
			e->hdr_bad = true;
		if (!e->pad && overlaps(at + HDR, e->len, off, n))
			e->body_bad = true;
	}
	check_copy(m);
}

/* A value near base (aligned or not), or any 64 bits. */
static uint64_t hostile_counter(uint64_t base, struct fuzz_in *in)
{
	uint8_t mode = (uint8_t)fuzz_take(in, 1);

	if (mode & 1)
		return fuzz_take(in, 8);
	return base + (uint64_t)(int64_t)(int16_t)fuzz_take(in, 2) * (mode & 2 ? 8 : 1);
}

static void op_overwrite_head(struct model *m, struct fuzz_in *in)
{
	atomic_store(&m->g.pctl->head, hostile_counter(m->p.published, in));
	check_copy(m);
}

static void op_overwrite_tail(struct model *m, struct fuzz_in *in)
{
	atomic_store(&m->g.cctl->tail, hostile_counter(m->honest_tail, in));
}

static void op_discard(struct model *m)
{
	bool honest = atomic_load(&m->g.pctl->head) == m->p.published;

	shmring_discard(&m->c);
	m->peeked = false;
	m->copy = NULL;
	if (!honest) {
		if (m->synced)
			unsync(m);
		return;
	}
	/* Back in step: everything published is dropped, what is reserved will come. */
	if (m->c.broken || m->c.tail != m->p.published)
		abort();
	while (m->n && front(m)->pos < m->p.published)
		pop(m);
	m->synced = true;
}

static void op_resync(struct model *m)
{
	if (atomic_load(&m->g.cctl->tail) != m->honest_tail)
		m->p_may_break = true;
	if (!shmring_producer_resync(&m->p) && !m->p_may_break)
		abort();
}

/* The hostile writer stops: the ring must carry records intact again. */
static void recover(struct model *m, uint8_t sel)
{
	struct fring *g = &m->g;
	uint32_t len = (uint32_t)((sel * 131u) % (shmring_max_payload(g->size) + 1));
	const struct shmring_rec *rec;
	uint8_t *pl;

	shmring_commit(&m->p);
	atomic_store(&g->pctl->head, m->p.published);
	shmring_discard(&m->c);
	if (m->c.broken || m->c.tail != m->p.published)
		abort();
	shmring_release(&m->c);
	if (!shmring_producer_resync(&m->p))
		abort();
	pl = shmring_reserve(&m->p, 7, 7, len);
	if (!pl)
		abort();                 /* the ring is empty */
	fill(pl, 7, len);
	shmring_commit(&m->p);
	rec = shmring_peek(&m->c);
	if (!rec || !intact(rec, 7, 7, len))
		abort();
	shmring_next(&m->c);
	if (shmring_peek(&m->c) || errno != EAGAIN)
		abort();
}

static void race(uint8_t sel, struct fuzz_in *in)
{
	struct model *m = calloc(1, sizeof(*m));

	if (!m)
		return;
	if (!fring_new(&m->g, (size_t)4096 << (sel & 1)))
		goto out;
	fuzz_bytes(in, m->g.data, (size_t)fuzz_take(in, 1) * 16);   /* leftovers */
	shmring_producer_attach(&m->p, &m->g.r);
	shmring_consumer_attach(&m->c, &m->g.r);
	m->synced = true;
	for (unsigned ops = 0; in->left && ops < MAX_OPS; ops++) {
		uint8_t op = (uint8_t)fuzz_take(in, 1);

		if (!m->synced)
			prune(m);
		switch (op % 15) {
		case 0: case 1: case 2: op_reserve(m, op, in); break;
		case 3: op_commit(m); break;
		case 4: case 5: op_peek(m); break;
		case 6: op_next(m); break;
		case 7: op_release(m); break;
		case 8: op_sleep(m); break;
		case 9: op_awake(m); break;
		case 10: op_overwrite_data(m, in); break;
		case 11: op_overwrite_head(m, in); break;
		case 12: op_overwrite_tail(m, in); break;
		case 13: op_discard(m); break;
		default: op_resync(m); break;
		}
	}
	recover(m, sel);
out:
	shmring_consumer_detach(&m->c);
	fring_free(&m->g);
	free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t sel = (uint8_t)fuzz_take(&in, 1);

	if (sel & 0x40)
		race(sel, &in);
	else
		still_memory(sel, &in);
	return 0;
}
