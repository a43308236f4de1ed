/*
 * fuzz_shmring.c - libFuzzer harness for the ring's consumer on corrupted
 * shared memory.
 *
 * Input: a size selector, the shared counters and flags, then data[]:
 * exactly what a consumer could find after a stray write into the
 * mapping. (size is set by the supervisor before any fork and never
 * written again; it is taken from the selector so that the buffer really
 * is that big.) Draining it must neither crash nor touch a byte outside
 * data[], must terminate, and must leave the consumer at the producer's
 * head; a producer resuming from there must then get its records through
 * intact.
 */
#include <stdlib.h>
#include <string.h>

#include "shmring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

static void load_state(struct shmring *r, uint8_t sel, struct fuzz_in *in)
{
	uint64_t tail = fuzz_take(in, 8);
	/* Mostly head near tail, as in a live ring; sometimes anything at all. */
	uint64_t head = sel & 0x80 ? fuzz_take(in, 8) : tail + (uint64_t)(int64_t)(int32_t)fuzz_take(in, 4);

	atomic_store(&r->tail, tail);
	atomic_store(&r->head, head);
	atomic_store(&r->c_sleep, (uint32_t)fuzz_take(in, 1));
	atomic_store(&r->p_wait, (uint32_t)fuzz_take(in, 1));
	memcpy(r->data, in->p, in->left < r->size ? in->left : r->size);
}

static volatile uint8_t fuzz_sink;

/* Every record the consumer hands out lies inside data[]; ASan checks the reads. */
static void drain(struct shmring *r, struct shmring_consumer *c)
{
	const struct shmring_rec *rec;
	uint64_t n = 0;
	uint8_t sum = 0;

	while ((rec = shmring_peek(c))) {
		const uint8_t *pl = shmring_payload(rec);

		if ((const uint8_t *)rec < r->data || pl + rec->len > r->data + r->size)
			abort();
		if (rec->type == SHMRING_PAD || ++n > r->size / sizeof(*rec))
			abort();
		for (uint32_t i = 0; i < rec->len; i++)
			sum += pl[i];
		shmring_next(c);
	}
	fuzz_sink = sum;
	if (c->tail != atomic_load(&r->head))
		abort();                 /* empty or skipped: either way caught up */
}

/* After the drain: a producer resuming at the head must be heard clearly. */
static void resume(struct shmring *r, struct shmring_consumer *c, uint8_t sel)
{
	struct shmring_producer p;
	uint32_t len[4];

	if (atomic_load(&r->head) % SHMRING_ALIGN)
		return;                  /* the producer trusts its own head */
	shmring_producer_attach(&p, r);
	for (int i = 0; i < 4; i++) {
		uint8_t *pl;

		len[i] = (uint32_t)((sel * 37u + i * 1000u) % (r->size / 8));
		pl = shmring_reserve(&p, (uint16_t)(i + 1), 0, len[i]);
		if (!pl)
			abort();         /* the ring is empty: 4 records of size/8 fit */
		memset(pl, i, len[i]);
		shmring_commit(&p);
		if (i == 1) {            /* the consumer restarts: 0 and 1 are stale */
			shmring_discard(c);
			shmring_release(c);
		}
	}
	for (int i = 2; i < 4; i++) {
		const struct shmring_rec *rec = shmring_peek(c);
		const uint8_t *pl;

		if (!rec || rec->type != i + 1 || rec->len != len[i])
			abort();
		pl = shmring_payload(rec);
		for (uint32_t k = 0; k < len[i]; k++)
			if (pl[k] != i)
				abort();
		shmring_next(c);
	}
	if (shmring_peek(c))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t sel = (uint8_t)fuzz_take(&in, 1);
	size_t ring_size = (size_t)4096 << (sel & 3);
	/* Exactly the footprint, not rounded up by an allocator: overreads show. */
	struct shmring *r = malloc(shmring_footprint(ring_size));
	struct shmring_consumer c;

	if (!r)
		return 0;
	memset(r, 0, shmring_footprint(ring_size));
	shmring_init(r, ring_size);
	load_state(r, sel, &in);

	shmring_consumer_attach(&c, r);
	drain(r, &c);
	shmring_release(&c);
	if (!shmring_prepare_sleep(&c))
		abort();
	shmring_awake(&c);
	resume(r, &c, sel);
	free(r);
	return 0;
}
