/*
 * test_qos.c - unit tests of a connection's QoS 1/2 state (daemon/qos.c):
 * packet ids (rotating past 65535, skipping 0 and ids in use), the
 * in-flight window and its limit, the queue behind it and its order, the
 * transitions on PUBACK, PUBREC and PUBCOMP and ids it does not know,
 * resumed sessions, inbound QoS 2 ids (exactly once, bounded), the bytes
 * held against max_inflight_bytes and max_queued_*, message references,
 * the state freed once nothing is held, and out-of-memory paths (chosen
 * allocations fail: the link wraps malloc and its kin, see the Makefile).
 * ASan in `make check-san` reports any leak.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "qos.h"
#include "rec.h"

/* --- allocations that fail on demand ------------------------------------- */

/* The next n allocations after the next `after` ones fail (fail_at < 0: none). */
static int fail_at = -1, fail_n;

static void fail_allocs(int after, int n)
{
	fail_at = after;
	fail_n = n;
}

static bool alloc_fails(void)
{
	if (fail_at < 0)
		return false;
	if (fail_at > 0) {
		fail_at--;
		return false;
	}
	if (--fail_n == 0)
		fail_at = -1;
	errno = ENOMEM;
	return true;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
void *__real_reallocarray(void *p, size_t k, size_t n);

void *__wrap_malloc(size_t n)
{
	return alloc_fails() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t k, size_t n)
{
	return alloc_fails() ? NULL : __real_calloc(k, n);
}

void *__wrap_realloc(void *p, size_t n)
{
	return alloc_fails() ? NULL : __real_realloc(p, n);
}

void *__wrap_reallocarray(void *p, size_t k, size_t n)
{
	return alloc_fails() ? NULL : __real_reallocarray(p, k, n);
}

/* --- fixtures ------------------------------------------------------------ */

static struct iotd_config cfg;

static int setup(void **state)
{
	config_defaults(&cfg);
	cfg.max_inflight = 2;
	cfg.max_queued_messages = 100;
	cfg.max_queued_bytes = 0;
	cfg.max_inflight_bytes = 1 << 20;
	fail_at = -1;
	return 0;
}

/* A message of topic "t" and n payload bytes, held by the test (one reference). */
static struct qmsg *msg(uint32_t n)
{
	static uint8_t payload[1 << 16];
	struct qmsg *m = qmsg_new((const uint8_t *)"t", 1, payload, n, NULL, 0, false);

	assert_non_null(m);
	m->refs = 1;
	return m;
}

/* One message at QoS qos; the verdict, *pid the packet id when sent. */
static enum qos_verdict offer(struct conn_qos **qp, uint16_t *next_pid, struct qmsg *m,
			      uint8_t qos, uint64_t copy, uint16_t *pid)
{
	struct inflight *sent = NULL;
	enum qos_verdict v = qos_offer(qp, next_pid, &cfg, 0, m, qos, copy, &sent);

	if (v == QOS_SEND || v == QOS_RESEND) {
		assert_non_null(sent);
		assert_ptr_equal(sent, &(*qp)->inflight[(*qp)->n_inflight - 1]);
		assert_ptr_equal(sent->msg, m);
		assert_int_equal(sent->state, MSG_INFLIGHT);
		assert_int_equal(sent->qos, qos);
		assert_int_equal(sent->copy, copy);
		if (pid)
			*pid = sent->packet_id;
	}
	return v;
}

static uint16_t pump(struct conn_qos *q, uint16_t *next_pid, struct qmsg **m)
{
	struct inflight *f = qos_pump(q, next_pid, &cfg, 0);

	if (f == NULL)
		return 0;
	assert_ptr_equal(f, &q->inflight[q->n_inflight - 1]);
	assert_int_equal(f->state, MSG_INFLIGHT);
	if (m)
		*m = f->msg;
	return f->packet_id;
}

/* The end of a test: the state freed, then the message, held by the test alone now. */
static void free_all(struct conn_qos *q, struct qmsg *m)
{
	qos_free(q);
	assert_int_equal(m->refs, 1);
	qmsg_unref(m);
}

/* Nothing is held: trimming frees the state. */
static void assert_trimmed_away(struct conn_qos **q)
{
	qos_trim(q);
	assert_null(*q);
}

/* --- packet ids and the window ------------------------------------------- */

static void a_first_message_allocates_the_state_and_goes_out_at_once(void **state)
{
	struct conn_qos *q = NULL;
	uint16_t next = 0, pid = 0;
	struct qmsg *m = msg(10);

	assert_int_equal(offer(&q, &next, m, 1, 77, &pid), QOS_SEND);
	assert_non_null(q);
	assert_int_equal(pid, 1);
	assert_int_equal(next, 1);
	assert_int_equal(q->n_inflight, 1);
	assert_int_equal(q->cap_inflight, cfg.max_inflight);
	assert_int_equal(q->inflight_bytes, 11);
	assert_int_equal(q->n_pending, 0);
	assert_int_equal(m->refs, 2);
	free_all(q, m);
}

static void packet_ids_rotate_past_65535_skipping_0_and_ids_in_use(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(0);
	uint16_t next = 65534, pid, a, b;
	uint64_t copy;

	cfg.max_inflight = 4;
	assert_int_equal(offer(&q, &next, m, 1, 0, &a), QOS_SEND);
	assert_int_equal(a, 65535);
	assert_int_equal(offer(&q, &next, m, 1, 0, &b), QOS_SEND);
	assert_int_equal(b, 1);               /* 0 is no packet id */
	assert_int_equal(offer(&q, &next, m, 1, 0, &pid), QOS_SEND);
	assert_int_equal(pid, 2);
	/* Around again with 65535, 1 and 2 in flight: the next free one is 3. */
	next = 65534;
	assert_int_equal(offer(&q, &next, m, 1, 0, &pid), QOS_SEND);
	assert_int_equal(pid, 3);
	assert_int_equal(next, 3);
	/* An id acknowledged is free again. */
	assert_true(qos_puback(q, 1, &copy));
	next = 65535;
	assert_int_equal(offer(&q, &next, m, 1, 0, &pid), QOS_SEND);
	assert_int_equal(pid, 1);
	assert_int_equal(q->n_inflight, 4);
	free_all(q, m);
}

static void a_full_window_queues_and_acknowledgements_send_the_oldest_first(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m[5], *got;
	uint16_t next = 0, pid;
	uint64_t copy;

	for (int i = 0; i < 5; i++)
		m[i] = msg((uint32_t)i);
	assert_int_equal(offer(&q, &next, m[0], 1, 10, NULL), QOS_SEND);
	assert_int_equal(offer(&q, &next, m[1], 2, 11, NULL), QOS_SEND);
	for (int i = 2; i < 5; i++)
		assert_int_equal(offer(&q, &next, m[i], 1, 10 + (uint64_t)i, NULL), QOS_QUEUED);
	assert_int_equal(q->n_inflight, 2);
	assert_int_equal(q->n_pending, 3);
	assert_int_equal(q->inflight_bytes, 1 + 2);
	assert_int_equal(q->pending_bytes, 3 + 4 + 5);
	assert_int_equal(m[2]->refs, 2);
	/* Nothing to pump while the window is full. */
	assert_int_equal(pump(q, &next, NULL), 0);

	assert_true(qos_puback(q, 1, &copy));
	assert_int_equal(copy, 10);
	assert_int_equal(m[0]->refs, 1);
	assert_int_equal(q->inflight_bytes, 2);
	/* Room, but something waits: a new message goes behind it, not past it. */
	assert_int_equal(offer(&q, &next, m[0], 1, 20, NULL), QOS_QUEUED);
	pid = pump(q, &next, &got);
	assert_int_equal(pid, 3);
	assert_ptr_equal(got, m[2]);
	assert_int_equal(q->inflight[1].copy, 12);
	assert_int_equal(m[2]->refs, 2);      /* the queue's reference became the window's */
	assert_int_equal(pump(q, &next, NULL), 0);
	assert_int_equal(q->n_pending, 3);
	assert_int_equal(q->pending_bytes, 4 + 5 + 1);
	assert_int_equal(q->inflight_bytes, 2 + 3);

	/* The window keeps the order sent, whichever is acknowledged first. */
	assert_true(qos_puback(q, 3, &copy));
	assert_int_equal(q->inflight[0].packet_id, 2);
	assert_ptr_equal(pump(q, &next, &got) ? got : NULL, m[3]);
	assert_int_equal(q->inflight[1].packet_id, 4);
	qos_free(q);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(m[i]->refs, 1);
		qmsg_unref(m[i]);
	}
}

/* A queued message whose expiry passed is dropped from the head of the queue, not sent. */
static void queued_messages_past_their_expiry_are_dropped_not_sent(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m[4], *got;
	uint16_t next = 0;
	uint64_t copy;

	for (int i = 0; i < 4; i++)
		m[i] = msg((uint32_t)i + 1);
	m[1]->expires_at = 1000;
	m[2]->expires_at = 5000;
	assert_int_equal(offer(&q, &next, m[0], 1, 10, NULL), QOS_SEND);
	assert_int_equal(offer(&q, &next, m[3], 1, 13, NULL), QOS_SEND);
	assert_int_equal(offer(&q, &next, m[1], 1, 11, NULL), QOS_QUEUED);
	assert_int_equal(offer(&q, &next, m[2], 1, 12, NULL), QOS_QUEUED);
	/* Not yet, and only the head. */
	assert_false(qos_drop_expired(q, 999, &copy));
	assert_true(qos_puback(q, 1, &copy));
	assert_true(qos_drop_expired(q, 1000, &copy));
	assert_int_equal(copy, 11);
	assert_int_equal(m[1]->refs, 1);
	assert_int_equal(q->n_pending, 1);
	assert_int_equal(q->pending_bytes, 1 + 3);      /* m[2]'s topic and payload */
	assert_false(qos_drop_expired(q, 4999, &copy));
	assert_int_equal(pump(q, &next, &got), 3);
	assert_ptr_equal(got, m[2]);
	assert_false(qos_drop_expired(q, UINT64_MAX, &copy));   /* nothing queued */
	qos_free(q);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(m[i]->refs, 1);
		qmsg_unref(m[i]);
	}
}

static void the_queue_grows_across_its_wrap_keeping_the_order(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m[64], *got;
	uint16_t next = 0, pid = 0;
	uint64_t copy;
	int sent = 0, queued = 0;

	cfg.max_inflight = 1;
	for (int i = 0; i < 64; i++)
		m[i] = msg((uint32_t)i);
	assert_int_equal(offer(&q, &next, m[queued++], 1, 1, &pid), QOS_SEND);
	sent = 1;
	/* 16 queued, then 10 sent, so that the ring's oldest is not at its start... */
	while (queued < 17)
		assert_int_equal(offer(&q, &next, m[queued++], 1, 1, NULL), QOS_QUEUED);
	assert_int_equal(q->cap_pending, 16);
	for (int i = 0; i < 10; i++) {
		assert_true(qos_puback(q, pid, &copy));
		pid = pump(q, &next, &got);
		assert_ptr_equal(got, m[sent++]);
	}
	/* ... and the next ones wrap in it, then make it grow twice. */
	while (queued < 64)
		assert_int_equal(offer(&q, &next, m[queued++], 1, 1, NULL), QOS_QUEUED);
	assert_int_equal(q->cap_pending, 64);
	assert_int_equal(q->n_pending, 64 - sent);
	while (sent < 64) {
		assert_true(qos_puback(q, pid, &copy));
		pid = pump(q, &next, &got);
		assert_ptr_equal(got, m[sent++]);
	}
	assert_int_equal(pump(q, &next, NULL), 0);
	assert_int_equal(q->pending_bytes, 0);
	assert_true(qos_puback(q, pid, &copy));
	assert_trimmed_away(&q);
	for (int i = 0; i < 64; i++) {
		assert_int_equal(m[i]->refs, 1);
		qmsg_unref(m[i]);
	}
}

static void a_raised_max_inflight_widens_the_window_and_a_lowered_one_narrows_it(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	uint16_t next = 0, pid;
	uint64_t copy;

	for (int i = 0; i < 6; i++)
		offer(&q, &next, m, 1, 0, NULL);
	assert_int_equal(q->n_inflight, 2);
	cfg.max_inflight = 4;
	assert_int_equal(pump(q, &next, NULL), 3);
	assert_int_equal(pump(q, &next, NULL), 4);
	assert_int_equal(pump(q, &next, NULL), 0);
	assert_int_equal(q->cap_inflight, 4);
	cfg.max_inflight = 1;
	/* Four in flight stay so; none more until they are down below one. */
	for (pid = 1; pid <= 3; pid++) {
		assert_true(qos_puback(q, pid, &copy));
		assert_int_equal(pump(q, &next, NULL), 0);
	}
	assert_true(qos_puback(q, 4, &copy));
	assert_int_equal(pump(q, &next, NULL), 5);
	assert_int_equal(q->cap_inflight, 4);
	assert_int_equal(q->n_pending, 1);
	free_all(q, m);
}

/* An MQTT 5 client's receive maximum narrows the window; max_inflight still bounds a larger one. */
static void the_clients_receive_maximum_narrows_the_window(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	struct inflight *sent;
	uint16_t next = 0;
	uint64_t copy;

	cfg.max_inflight = 4;
	for (int i = 0; i < 3; i++)
		qos_offer(&q, &next, &cfg, 2, m, 1, 0, &sent);
	assert_int_equal(q->n_inflight, 2);
	assert_int_equal(q->n_pending, 1);
	assert_null(qos_pump(q, &next, &cfg, 2));
	assert_true(qos_puback(q, 1, &copy));
	assert_non_null(qos_pump(q, &next, &cfg, 2));
	assert_int_equal(q->n_inflight, 2);
	for (int i = 0; i < 4; i++)
		qos_offer(&q, &next, &cfg, 100, m, 1, 0, &sent);
	assert_int_equal(q->n_inflight, 4);
	free_all(q, m);
}

/* --- limits and bytes ---------------------------------------------------- */

static void the_queue_refuses_past_max_queued_messages_and_bytes(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(9);         /* 10 bytes with its topic */
	uint16_t next = 0;

	cfg.max_queued_messages = 2;
	offer(&q, &next, m, 1, 0, NULL);
	offer(&q, &next, m, 1, 0, NULL);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_QUEUED);
	assert_int_equal(offer(&q, &next, m, 2, 0, NULL), QOS_QUEUED);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_DROP_QUEUE);
	assert_int_equal(m->refs, 5);            /* a refused message is not held */
	assert_int_equal(q->n_pending, 2);
	assert_int_equal(q->pending_bytes, 20);

	cfg.max_queued_messages = 100;
	cfg.max_queued_bytes = 30;
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_QUEUED);    /* 30: at the cap */
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_DROP_QUEUE);
	cfg.max_queued_bytes = 0;                                          /* no byte cap */
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_QUEUED);
	assert_int_equal(q->pending_bytes, 40);
	free_all(q, m);
}

static void max_inflight_bytes_bounds_the_window_and_the_queue_together(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *big = msg(199), *small = msg(49);   /* 200 and 50 bytes */
	uint16_t next = 0, pid;
	uint64_t copy;

	cfg.max_inflight_bytes = 150;
	/* Holding nothing, a message larger than the limit still goes out. */
	assert_int_equal(offer(&q, &next, big, 2, 5, &pid), QOS_SEND);
	assert_int_equal(q->inflight_bytes, 200);
	assert_int_equal(offer(&q, &next, small, 1, 6, NULL), QOS_DROP_BYTES);
	assert_int_equal(small->refs, 1);
	/* PUBREC lets the message go: the PUBREL stage holds no bytes. */
	assert_int_equal(qos_pubrec(q, pid, &copy), QOS_PUBREC_RELEASED);
	assert_int_equal(q->inflight_bytes, 0);
	assert_int_equal(big->refs, 1);
	assert_int_equal(offer(&q, &next, small, 1, 0, NULL), QOS_SEND);
	assert_int_equal(offer(&q, &next, small, 1, 0, NULL), QOS_QUEUED);   /* window full */
	assert_int_equal(offer(&q, &next, small, 1, 0, NULL), QOS_QUEUED);   /* 150: at the limit */
	assert_int_equal(q->inflight_bytes + q->pending_bytes, 150);
	assert_int_equal(offer(&q, &next, small, 1, 0, NULL), QOS_DROP_BYTES);
	/* The queue's bytes move to the window as it is pumped. */
	assert_true(qos_pubcomp(q, pid, &copy));
	assert_int_not_equal(pump(q, &next, NULL), 0);
	assert_int_equal(q->inflight_bytes, 100);
	assert_int_equal(q->pending_bytes, 50);
	qos_free(q);
	assert_int_equal(small->refs, 1);
	qmsg_unref(small);
	qmsg_unref(big);
}

/* --- acknowledgements ---------------------------------------------------- */

static void qos1_is_done_at_puback_and_nothing_else(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(3);
	uint16_t next = 0, pid;
	uint64_t copy = 0;

	offer(&q, &next, m, 1, 42, &pid);
	assert_false(qos_pubcomp(q, pid, &copy));
	assert_int_equal(qos_pubrec(q, pid, &copy), QOS_PUBREC_UNKNOWN);
	assert_int_equal(q->inflight[0].state, MSG_INFLIGHT);
	assert_int_equal(m->refs, 2);
	assert_true(qos_puback(q, pid, &copy));
	assert_int_equal(copy, 42);
	assert_int_equal(q->n_inflight, 0);
	assert_int_equal(q->inflight_bytes, 0);
	assert_int_equal(m->refs, 1);
	assert_false(qos_puback(q, pid, &copy));        /* once */
	assert_trimmed_away(&q);
	qmsg_unref(m);
}

static void qos2_goes_pubrec_then_pubcomp(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(3);
	uint16_t next = 0, pid;
	uint64_t copy = 0;

	offer(&q, &next, m, 2, 43, &pid);
	assert_false(qos_puback(q, pid, &copy));         /* a QoS 2 message */
	assert_false(qos_pubcomp(q, pid, &copy));        /* not released yet */
	assert_int_equal(qos_pubrec(q, pid, &copy), QOS_PUBREC_RELEASED);
	assert_int_equal(copy, 43);
	assert_int_equal(q->inflight[0].state, MSG_PUBREL);
	assert_null(q->inflight[0].msg);
	assert_int_equal(m->refs, 1);
	/* A repeated PUBREC is answered again, and changes nothing. */
	copy = 0;
	assert_int_equal(qos_pubrec(q, pid, &copy), QOS_PUBREC_AGAIN);
	assert_int_equal(copy, 43);
	assert_false(qos_puback(q, pid, &copy));
	assert_int_equal(q->n_inflight, 1);
	assert_true(qos_pubcomp(q, pid, &copy));
	assert_int_equal(copy, 43);
	assert_int_equal(q->n_inflight, 0);
	assert_false(qos_pubcomp(q, pid, &copy));
	assert_trimmed_away(&q);
	qmsg_unref(m);
}

/* An MQTT 5 PUBREC of failure ends a QoS 2 exchange in flight, and nothing else. */
static void qos2_refused_by_pubrec_ends_there(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(3), *m1 = msg(3);
	uint16_t next = 0, pid, pid1;
	uint64_t copy = 0;

	(void)state;
	offer(&q, &next, m, 2, 44, &pid);
	offer(&q, &next, m1, 1, 45, &pid1);
	assert_false(qos_pubrec_refused(q, pid1, &copy));   /* a QoS 1 message */
	assert_true(qos_pubrec_refused(q, pid, &copy));
	assert_int_equal(copy, 44);
	assert_int_equal(q->n_inflight, 1);
	assert_false(qos_pubcomp(q, pid, &copy));           /* gone: no PUBREL, no PUBCOMP */
	assert_false(qos_pubrec_refused(q, pid, &copy));
	assert_true(qos_puback(q, pid1, &copy));
	/* One at PUBREL already is past refusing. */
	offer(&q, &next, m, 2, 46, &pid);
	assert_int_equal(qos_pubrec(q, pid, &copy), QOS_PUBREC_RELEASED);
	assert_false(qos_pubrec_refused(q, pid, &copy));
	assert_true(qos_pubcomp(q, pid, &copy));
	assert_trimmed_away(&q);
	qmsg_unref(m);
	qmsg_unref(m1);
}

static void unknown_ids_change_nothing(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(3);
	uint16_t next = 0, pid;
	uint64_t copy = 99;

	/* No state at all. */
	assert_false(qos_puback(NULL, 1, &copy));
	assert_false(qos_pubcomp(NULL, 1, &copy));
	assert_int_equal(qos_pubrec(NULL, 1, &copy), QOS_PUBREC_UNKNOWN);
	assert_false(qos_in_release(&q, 1));
	assert_null(q);
	assert_int_equal(copy, 99);

	offer(&q, &next, m, 2, 1, &pid);
	assert_false(qos_puback(q, (uint16_t)(pid + 1), &copy));
	assert_false(qos_pubcomp(q, 0, &copy));
	assert_int_equal(qos_pubrec(q, (uint16_t)(pid + 1), &copy), QOS_PUBREC_UNKNOWN);
	assert_false(qos_in_release(&q, pid));          /* an outbound id is not an inbound one */
	assert_int_equal(copy, 99);
	assert_int_equal(q->n_inflight, 1);
	assert_int_equal(q->inflight[0].state, MSG_INFLIGHT);
	assert_int_equal(q->inflight_bytes, 4);
	free_all(q, m);
}

/* --- resumed sessions ---------------------------------------------------- */

static void a_resumed_message_in_flight_keeps_its_packet_id(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	struct inflight *sent = NULL;
	uint16_t next = 0;

	cfg.max_inflight = 3;
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 2, MSG_INFLIGHT, 500, 7, &sent),
			 QOS_RESEND);
	assert_int_equal(sent->packet_id, 500);
	assert_int_equal(sent->copy, 7);
	assert_int_equal(next, 0);                       /* no new id taken */
	assert_int_equal(m->refs, 2);
	/* Its id in use, or 0: a new delivery under a new id. */
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 1, MSG_INFLIGHT, 500, 8, &sent), QOS_SEND);
	assert_int_equal(sent->packet_id, 1);
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 1, MSG_INFLIGHT, 0, 9, &sent), QOS_SEND);
	assert_int_equal(sent->packet_id, 2);
	/* Window full: queued, whatever its state. */
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 1, MSG_INFLIGHT, 600, 0, &sent),
			 QOS_QUEUED);
	/* Something queued: a resend does not pass it, even with room. */
	cfg.max_inflight = 10;
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 1, MSG_INFLIGHT, 601, 0, &sent),
			 QOS_QUEUED);
	qos_free(q);
	q = NULL;
	/* A queued one gets a new id. */
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 1, MSG_QUEUED, 700, 0, &sent), QOS_SEND);
	assert_int_equal(sent->packet_id, 3);
	free_all(q, m);
}

static void a_resumed_pubrel_waits_for_its_pubcomp(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	uint16_t next = 0, pid;
	uint64_t copy;

	assert_false(qos_resume_pubrel(&q, &cfg, 0, 0, 3));
	assert_null(q);
	assert_true(qos_resume_pubrel(&q, &cfg, 0, 300, 3));
	assert_int_equal(q->n_inflight, 1);
	assert_int_equal(q->inflight[0].state, MSG_PUBREL);
	assert_int_equal(q->inflight[0].qos, 2);
	assert_null(q->inflight[0].msg);
	assert_int_equal(q->inflight_bytes, 0);
	assert_false(qos_resume_pubrel(&q, &cfg, 0, 300, 4));       /* in use */
	assert_int_equal(qos_pubrec(q, 300, &copy), QOS_PUBREC_AGAIN);
	offer(&q, &next, m, 1, 0, &pid);
	assert_false(qos_resume_pubrel(&q, &cfg, 0, 301, 5));       /* window full */
	assert_int_equal(q->n_inflight, 2);
	assert_true(qos_pubcomp(q, 300, &copy));
	assert_int_equal(copy, 3);
	assert_true(qos_puback(q, pid, &copy));
	assert_trimmed_away(&q);
	qmsg_unref(m);
}

/* --- inbound QoS 2 ------------------------------------------------------- */

static void inbound_qos2_ids_are_held_once_until_pubrel(void **state)
{
	struct conn_qos *q = NULL;

	cfg.max_inflight = 3;
	assert_int_equal(qos_in_receive(&q, &cfg, 7), QOS_IN_NEW);
	assert_non_null(q);
	assert_int_equal(qos_in_receive(&q, &cfg, 7), QOS_IN_HELD);     /* a resend */
	assert_int_equal(qos_in_receive(&q, &cfg, 8), QOS_IN_NEW);
	assert_int_equal(qos_in_receive(&q, &cfg, 9), QOS_IN_NEW);
	assert_int_equal(qos_in_receive(&q, &cfg, 10), QOS_IN_FULL);
	assert_int_equal(qos_in_receive(&q, &cfg, 9), QOS_IN_HELD);     /* held ones still are */
	assert_int_equal(q->n_qos2_in, 3);
	assert_true(qos_in_release(&q, 7));
	assert_false(qos_in_release(&q, 7));
	assert_int_equal(q->n_qos2_in, 2);
	assert_int_equal(qos_in_receive(&q, &cfg, 7), QOS_IN_NEW);       /* after PUBREL: new */
	assert_int_equal(qos_in_receive(&q, &cfg, 10), QOS_IN_FULL);
	assert_true(qos_in_release(&q, 8));
	assert_true(qos_in_release(&q, 7));
	assert_int_equal(qos_in_receive(&q, &cfg, 10), QOS_IN_NEW);
	assert_true(qos_in_release(&q, 9));
	assert_non_null(q);
	assert_true(qos_in_release(&q, 10));
	assert_null(q);                                  /* nothing held: freed */
}

static void held_inbound_ids_keep_the_state_once_the_window_empties(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	uint16_t next = 0, pid;
	uint64_t copy;

	for (uint16_t id = 1; id <= 20; id++)      /* past the array's first size */
		assert_int_equal(qos_in_hold(&q, id), 0);
	assert_int_equal(q->n_qos2_in, 20);
	offer(&q, &next, m, 1, 0, &pid);
	assert_true(qos_puback(q, pid, &copy));
	qos_trim(&q);
	assert_non_null(q);
	assert_null(q->inflight);
	assert_int_equal(q->cap_inflight, 0);
	assert_null(q->pend);
	assert_int_equal(q->n_qos2_in, 20);
	/* A window allocated again works as before. */
	assert_int_equal(offer(&q, &next, m, 1, 0, &pid), QOS_SEND);
	assert_int_equal(pid, 2);
	free_all(q, m);
}

/* --- out of memory ------------------------------------------------------- */

static void out_of_memory_refuses_and_leaves_nothing_behind(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	struct inflight *sent;
	uint16_t next = 0;

	qmsg_spares_free();     /* a kept one would need no allocation */
	fail_allocs(0, 1);
	assert_null(qmsg_new((const uint8_t *)"t", 1, NULL, 0, NULL, 0, false));
	/* No state: refused, nothing held. */
	fail_allocs(0, 1);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_NOMEM);
	assert_null(q);
	/* No window, then no queue either. */
	fail_allocs(1, 2);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_DROP_QUEUE);
	assert_null(q);
	assert_int_equal(m->refs, 1);
	assert_int_equal(next, 0);
	/* No window but a queue: it waits there, and goes once the window can be had. */
	fail_allocs(1, 1);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_QUEUED);
	assert_int_equal(q->n_pending, 1);
	assert_int_equal(pump(q, &next, NULL), 1);
	qos_free(q);
	q = NULL;

	/* A resend without state falls back to a delivery, which tries again. */
	fail_allocs(0, 2);
	assert_int_equal(qos_resume(&q, &next, &cfg, 0, m, 1, MSG_INFLIGHT, 9, 0, &sent), QOS_NOMEM);
	assert_null(q);
	fail_allocs(0, 1);
	assert_false(qos_resume_pubrel(&q, &cfg, 0, 9, 0));
	assert_null(q);
	fail_allocs(1, 1);
	assert_false(qos_resume_pubrel(&q, &cfg, 0, 9, 0));
	assert_null(q);

	fail_allocs(0, 1);
	assert_int_equal(qos_in_receive(&q, &cfg, 1), QOS_IN_NOMEM);
	assert_null(q);
	fail_allocs(1, 1);
	assert_int_equal(qos_in_receive(&q, &cfg, 1), QOS_IN_NOMEM);
	assert_null(q);
	fail_allocs(0, 1);
	assert_int_equal(qos_in_hold(&q, 1), -1);
	assert_null(q);
	assert_int_equal(fail_at, -1);
	assert_int_equal(m->refs, 1);
	qmsg_unref(m);
}

static void a_queue_that_cannot_grow_refuses_and_keeps_what_it_holds(void **state)
{
	struct conn_qos *q = NULL;
	struct qmsg *m = msg(1);
	uint16_t next = 0;

	cfg.max_inflight = 1;
	offer(&q, &next, m, 1, 0, NULL);
	for (int i = 0; i < 16; i++)
		assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_QUEUED);
	fail_allocs(0, 1);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_DROP_QUEUE);
	assert_int_equal(q->n_pending, 16);
	assert_int_equal(q->cap_pending, 16);
	assert_int_equal(q->pending_bytes, 16 * 2);
	assert_int_equal(m->refs, 1 + 17);
	assert_int_equal(offer(&q, &next, m, 1, 0, NULL), QOS_QUEUED);
	free_all(q, m);
}

/* --- messages ------------------------------------------------------------ */

static void a_message_shared_by_connections_lives_until_the_last_lets_go(void **state)
{
	struct conn_qos *a = NULL, *b = NULL;
	struct qmsg *m = qmsg_new((const uint8_t *)"a/b", 3, (const uint8_t *)"xyz", 3, NULL, 0, true);
	uint16_t na = 0, nb = 0, pa, pb;
	uint64_t copy;

	assert_non_null(m);
	assert_int_equal(m->refs, 0);
	assert_int_equal(qmsg_bytes(m), 6);
	assert_true(m->retain);
	assert_memory_equal(m->data, "a/bxyz", 6);
	offer(&a, &na, m, 1, 0, &pa);
	offer(&b, &nb, m, 2, 0, &pb);
	assert_int_equal(m->refs, 2);
	assert_true(qos_puback(a, pa, &copy));
	assert_int_equal(m->refs, 1);
	assert_int_equal(qos_pubrec(b, pb, &copy), QOS_PUBREC_RELEASED);   /* freed here */
	qos_trim(&a);
	qos_free(b);
	assert_null(a);
}

static void a_freed_message_serves_the_next_of_its_size(void **state)
{
	struct qmsg *m = msg(40), *again, *larger, *big;

	qmsg_unref(m);
	/* The last freed, of the same 64-byte step, comes back: no allocation. */
	fail_allocs(0, 1);
	again = msg(50);
	assert_ptr_equal(again, m);
	assert_int_equal(qmsg_bytes(again), 51);
	/* Another step allocates; so does one larger than any kept. */
	fail_allocs(-1, 0);
	larger = msg(200);
	assert_ptr_not_equal(larger, m);
	big = msg(1000);
	qmsg_unref(again);
	qmsg_unref(larger);
	qmsg_unref(big);
	/* A message nothing took is freed by its maker. */
	m = qmsg_new((const uint8_t *)"t", 1, NULL, 0, NULL, 0, false);
	assert_non_null(m);
	qmsg_discard(m);
	qmsg_discard(NULL);
	qmsg_spares_free();
}

static void a_large_message_freed_asks_for_a_heap_trim(void **state)
{
	struct qmsg *small = msg(TRIM_MIN_BYTES - 2), *large = msg(TRIM_MIN_BYTES - 1);

	heap_trim_wanted = false;
	qmsg_unref(small);
	assert_false(heap_trim_wanted);
	qmsg_unref(large);
	assert_true(heap_trim_wanted);
	heap_trim_wanted = false;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(a_first_message_allocates_the_state_and_goes_out_at_once, setup),
		cmocka_unit_test_setup(packet_ids_rotate_past_65535_skipping_0_and_ids_in_use, setup),
		cmocka_unit_test_setup(a_full_window_queues_and_acknowledgements_send_the_oldest_first,
				       setup),
		cmocka_unit_test_setup(the_queue_grows_across_its_wrap_keeping_the_order, setup),
		cmocka_unit_test_setup(queued_messages_past_their_expiry_are_dropped_not_sent, setup),
		cmocka_unit_test_setup(a_raised_max_inflight_widens_the_window_and_a_lowered_one_narrows_it,
				       setup),
		cmocka_unit_test_setup(the_clients_receive_maximum_narrows_the_window, setup),
		cmocka_unit_test_setup(the_queue_refuses_past_max_queued_messages_and_bytes, setup),
		cmocka_unit_test_setup(max_inflight_bytes_bounds_the_window_and_the_queue_together,
				       setup),
		cmocka_unit_test_setup(qos1_is_done_at_puback_and_nothing_else, setup),
		cmocka_unit_test_setup(qos2_goes_pubrec_then_pubcomp, setup),
		cmocka_unit_test_setup(qos2_refused_by_pubrec_ends_there, setup),
		cmocka_unit_test_setup(unknown_ids_change_nothing, setup),
		cmocka_unit_test_setup(a_resumed_message_in_flight_keeps_its_packet_id, setup),
		cmocka_unit_test_setup(a_resumed_pubrel_waits_for_its_pubcomp, setup),
		cmocka_unit_test_setup(inbound_qos2_ids_are_held_once_until_pubrel, setup),
		cmocka_unit_test_setup(held_inbound_ids_keep_the_state_once_the_window_empties, setup),
		cmocka_unit_test_setup(out_of_memory_refuses_and_leaves_nothing_behind, setup),
		cmocka_unit_test_setup(a_queue_that_cannot_grow_refuses_and_keeps_what_it_holds, setup),
		cmocka_unit_test_setup(a_message_shared_by_connections_lives_until_the_last_lets_go,
				       setup),
		cmocka_unit_test_setup(a_freed_message_serves_the_next_of_its_size, setup),
		cmocka_unit_test_setup(a_large_message_freed_asks_for_a_heap_trim, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
