/*
 * store.c - the router's state in an LMDB environment (see store.h).
 *
 * Owns what the store holds: the named databases of its LMDB environment
 * (data.mdb), the layout of every key and value in them, the write
 * transaction of each loop turn and the reads. Where the directory lives,
 * its lock file (iotd.lock) and opening it are store_open.c's.
 *
 *   meta      "format" -> u64 STORE_FORMAT, "daemon" -> identity string,
 *             "next_sid", "tail/<i>", "head/<i>" -> u64
 *   sessions  sid (u32 BE) -> clean, last_seen, client id, remote, QoS 2 ids,
 *             the accepted CONNECT (when online), a waiting CONNECT, then
 *             (format 3) the session's user name and the waiting CONNECT's,
 *             then (format 4) the session's token (u8: 1 when its user came
 *             with a token's rules, and u32-counted rules) and the waiting
 *             CONNECT's, then (format 6) the session expiry interval, a
 *             will held back for its delay (u8; then its deadline and its
 *             CONNECT), and the MQTT 5 part of each CONNECT held (session
 *             expiry, will delay, will expiry, will properties); format
 *             8 writes the same fields afresh, tighter: see "sessions,
 *             format 8" below
 *   subs      sid (u32 BE) + filter -> u8 options (format 5: the MQTT 5
 *             subscription options byte, QoS in its low bits; before, the
 *             QoS alone, which reads as the same QoS without options),
 *             then (format 6) the u32 subscription identifier when it has
 *             one (MQTT 5)
 *   messages  order (u64 BE) + sid (u32 BE) -> packet id, state, qos,
 *             retain, topic, payload, then (format 6) the message's expiry
 *             (u64) and its MQTT 5 property block (u32-counted), then
 *             (format 7, only when it has some) its subscription
 *             identifiers (u8 count, u32 each); one with none of these
 *             (every 3.1.1 message) is written as format 5 wrote it, which
 *             reads as none of them. Up to format 7 these were
 *             database "queue", keyed sid + order: see "Queue keys" below
 *   retained  topic -> u8 qos + payload; format 6: a qos byte with
 *             STORE_RETAINED_V5 set is followed by the expiry (u64) and
 *             the property block (u32-counted) before the payload
 *   outbox    ring (u32 BE) + seq (u64 BE) -> u16 type + record payload
 *
 * Big-endian numbers in keys keep LMDB's byte order equal to numeric
 * order, so a session's subscriptions are one key range. Values
 * use rec.h's host-order fields: an LMDB file is tied to its architecture
 * anyway. LMDB keys are limited to 511 bytes while topics and filters may
 * reach 65535: a longer key is stored as its first STORE_KEY_PREFIX bytes
 * plus a u32 discriminator, with the whole key in front of the value.
 *
 * A format is read by every later iotd, which marks the store with its own
 * format as it opens it (an older iotd then refuses it) and leaves the
 * values as they are: what a later format adds goes at the end of a value,
 * so an older value reads as without it (format 2: no user names; format
 * 3: no token's rules, which its daemon never stored; format 4: no
 * subscription options; format 5: no subscription identifiers, no
 * message properties nor expiry, and a retained message's qos byte never
 * has STORE_RETAINED_V5 set; format 6: no queued message's subscription
 * identifiers). Format 8 encodes a session anew, from its first byte on:
 * an older session's value is read by the older decoder, and written as
 * format 8 the next time the session changes.
 *
 * Queue keys (format 8). Queue order is one counter for all sessions, so
 * keyed by it first, the messages of every session's queue are one run
 * in time: each new one is appended (MDB_APPEND, which fills pages
 * instead of splitting them) to the end of the tree, and the oldest,
 * which are mostly the ones done, are deleted from its start. Each turn
 * of a busy router then dirties a few pages at either end, where keys by
 * session first dirtied pages at both ends of every session's range. A
 * session's queue is no key range any more: the router deletes each of
 * its messages (it holds them all), and a new daemon's claim sweeps the
 * messages of the sessions it dropped. A store of an older format has
 * its "queue" moved into "messages" as it is opened (store_open.c).
 *
 * The environment is opened MDB_NOLOCK (iotd.lock guarantees a single
 * user, so no robust mutex or reader table can be left behind by a
 * killed router) and MDB_NOSYNC (durability is store_sync's business,
 * once a second, for "disk"; tmpfs has nothing to sync). MDB_WRITEMAP is
 * not used: a full tmpfs would turn a write into SIGBUS, where write(2)
 * returns ENOSPC and the router goes on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

#include "iotd.h"
#include "log.h"
#include "rec.h"
#include "store_int.h"

/* ---- keys -------------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
	for (int i = 3; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}


/* A session's key, in kb. */
static MDB_val key_sid(uint8_t kb[4], uint32_t sid)
{
	put_be32(kb, sid);
	return mval(kb, 4);
}

/* The key of a ring's held record: ring, then order, in kb. */
static MDB_val key_ordered(uint8_t kb[12], uint32_t id, uint64_t order)
{
	put_be32(kb, id);
	put_be64(kb + 4, order);
	return mval(kb, 12);
}

/* a's key after b's? */
static bool qkey_after(struct store_qkey a, struct store_qkey b)
{
	return a.order > b.order || (a.order == b.order && a.sid > b.sid);
}

/* The key of a session's queued message (format 8): order, then session, in kb. */
static MDB_val key_queued(uint8_t kb[STORE_QKEY_LEN], uint32_t sid, uint64_t order)
{
	put_be64(kb, order);
	put_be32(kb + 8, sid);
	return mval(kb, STORE_QKEY_LEN);
}

/* ---- failures ---------------------------------------------------------- */

/*
 * A write failed: the transaction is unusable (LMDB requires an abort
 * after MDB_MAP_FULL and friends), so everything of this turn is lost to
 * the store. Log it once per episode; the router rewrites it all later.
 */
static void store_fail(struct store *st, const char *what, int rc)
{
	st->n_qdel = 0;
	if (!st->warned)
		log_error("store %s: %s: %s: serving from memory; the store is written again in full once it accepts writes",
			  st->dir, what, mdb_strerror(rc));
	st->warned = true;
	st->stale = true;
	st->resyncing = false;
	if (st->txn) {
		mdb_txn_abort(st->txn);
		st->txn = NULL;
	}
}

bool store_pending(const struct store *st)
{
	return st != NULL && st->txn != NULL;
}

static MDB_txn *store_wtxn(struct store *st)
{
	int rc;

	if (st->stale)
		return NULL;
	if (st->txn)
		return st->txn;
	rc = mdb_txn_begin(st->env, NULL, 0, &st->txn);
	if (rc) {
		st->txn = NULL;
		store_fail(st, "beginning a transaction", rc);
		return NULL;
	}
	return st->txn;
}

static void store_put(struct store *st, MDB_dbi dbi, MDB_val *k, MDB_val *v, const char *what)
{
	MDB_txn *txn = store_wtxn(st);
	int rc;

	if (!txn)
		return;
	rc = mdb_put(txn, dbi, k, v, 0);
	if (rc)
		store_fail(st, what, rc);
}

static void store_del(struct store *st, MDB_dbi dbi, MDB_val *k, const char *what)
{
	MDB_txn *txn = store_wtxn(st);
	int rc;

	if (!txn)
		return;
	rc = mdb_del(txn, dbi, k, NULL);
	if (rc && rc != MDB_NOTFOUND)
		store_fail(st, what, rc);
}

/* Deletes the key_ordered() key (id, order). */
static void store_del_ordered(struct store *st, MDB_dbi dbi, uint32_t id, uint64_t order,
			      const char *what)
{
	uint8_t kb[12];
	MDB_val k = key_ordered(kb, id, order);

	store_del(st, dbi, &k, what);
}

/*
 * The value just encoded into st->val, for a write: false, with nothing to
 * write, when the write transaction cannot be had or the encoding ran out
 * of memory (the store fails then).
 */
static bool store_encoded(struct store *st, MDB_val *v, const char *what)
{
	if (!store_wtxn(st))
		return false;
	if (st->val.oom) {
		store_fail(st, what, ENOMEM);
		return false;
	}
	*v = mval(st->val.buf, st->val.len);
	return true;
}

/* Delete every key that starts with prefix. */
static void store_del_prefix(struct store *st, MDB_dbi dbi, const void *prefix, size_t len,
			     const char *what)
{
	MDB_txn *txn = store_wtxn(st);
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	if (!txn)
		return;
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc) {
		store_fail(st, what, rc);
		return;
	}
	for (;;) {
		k = mval(prefix, len);
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
		if (rc || k.mv_size < len || memcmp(k.mv_data, prefix, len) != 0)
			break;
		rc = mdb_cursor_del(cur, 0);
		if (rc)
			break;
	}
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND)
		store_fail(st, what, rc);
}

/* ---- long keys --------------------------------------------------------- */

/*
 * Find the key under which 'full' is stored (*found) or may be stored,
 * into *key (short keys are 'full' itself, long ones live in st->key).
 * A long key is searched among the keys that share its prefix, comparing
 * the whole key kept in front of each value. Returns 0 or an LMDB error.
 */
static int lkey_find(struct store *st, MDB_txn *txn, MDB_dbi dbi, const void *full,
		     size_t len, MDB_val *key, bool *found)
{
	MDB_cursor *cur;
	MDB_val k, v;
	uint32_t next = 0, n, flen;
	int rc;

	*found = false;
	if (len <= STORE_KEY_PREFIX) {
		*key = mval(full, len);
		rc = mdb_get(txn, dbi, key, &v);
		*found = rc == 0;
		return rc == MDB_NOTFOUND ? 0 : rc;
	}
	memcpy(st->key, full, STORE_KEY_PREFIX);
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc)
		return rc;
	k = mval(st->key, STORE_KEY_PREFIX);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size < STORE_KEY_PREFIX || memcmp(k.mv_data, st->key, STORE_KEY_PREFIX))
			break;
		if (k.mv_size != STORE_KEY_LONG || v.mv_size < 4)
			continue;
		n = get_be32((const uint8_t *)k.mv_data + STORE_KEY_PREFIX);
		next = MAX(next, n + 1);
		memcpy(&flen, v.mv_data, 4);
		if (flen == len && v.mv_size >= 4 + len &&
		    memcmp((const uint8_t *)v.mv_data + 4, full, len) == 0) {
			next = n;
			*found = true;
			break;
		}
	}
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND)
		return rc;
	put_be32(st->key + STORE_KEY_PREFIX, next);
	*key = mval(st->key, STORE_KEY_LONG);
	return 0;
}

/* Put value (a, b) under the possibly long key 'full'. */
static void lkey_put(struct store *st, MDB_dbi dbi, const void *full, size_t len,
		     const void *a, size_t alen, const void *b, size_t blen, const char *what)
{
	MDB_txn *txn = store_wtxn(st);
	uint32_t flen = (uint32_t)len;
	size_t head = len > STORE_KEY_PREFIX ? 4 + len : 0;
	MDB_val k, v;
	uint8_t *p;
	bool found;
	int rc;

	if (!txn)
		return;
	rc = lkey_find(st, txn, dbi, full, len, &k, &found);
	if (rc)
		goto fail;
	v = mval(NULL, head + alen + blen);
	rc = mdb_put(txn, dbi, &k, &v, MDB_RESERVE);
	if (rc)
		goto fail;
	p = v.mv_data;
	if (head) {
		memcpy(p, &flen, 4);
		memcpy(p + 4, full, len);
	}
	if (alen)
		memcpy(p + head, a, alen);
	if (blen)
		memcpy(p + head + alen, b, blen);
	return;
fail:
	store_fail(st, what, rc);
}

static void lkey_del(struct store *st, MDB_dbi dbi, const void *full, size_t len,
		     const char *what)
{
	MDB_txn *txn = store_wtxn(st);
	MDB_val k;
	bool found;
	int rc;

	if (!txn)
		return;
	rc = lkey_find(st, txn, dbi, full, len, &k, &found);
	if (rc == 0 && found)
		rc = mdb_del(txn, dbi, &k, NULL);
	if (rc)
		store_fail(st, what, rc);
}

/* Split an entry into its whole key and the rest of its value. false: corrupt. */
static bool lkey_split(const MDB_val *k, const MDB_val *v, MDB_val *full, MDB_val *rest)
{
	uint32_t flen;

	if (k->mv_size != STORE_KEY_LONG) {
		*full = *k;
		*rest = *v;
		return true;
	}
	if (v->mv_size < 4)
		return false;
	memcpy(&flen, v->mv_data, 4);
	if (flen <= STORE_KEY_PREFIX || v->mv_size - 4 < flen)
		return false;
	*full = mval((const uint8_t *)v->mv_data + 4, flen);
	*rest = mval((const uint8_t *)v->mv_data + 4 + flen, v->mv_size - 4 - flen);
	return true;
}

/* ---- value encodings --------------------------------------------------- */

/* NUL-terminated strings travel with their NUL, so a reader can point at them. */
static void enc_cstr(struct recw *w, const char *s)
{
	size_t len = strnlen(s ? s : "", UINT16_MAX - 1);

	recw_str(w, s ? s : "", (uint16_t)(len + 1));
	if (w->len && !w->oom)
		w->buf[w->len - 1] = '\0';
}

/* The len bytes at p, read as a string ending with its NUL; else corrupt (r->err) and "". */
static const char *cstr_at(struct recr *r, const uint8_t *p, size_t len)
{
	if (!p || !len || p[len - 1] != '\0') {
		r->err = true;
		return "";
	}
	return (const char *)p;
}

static const char *dec_cstr(struct recr *r)
{
	const uint8_t *p;
	uint16_t len;

	recr_str(r, &p, &len);
	return cstr_at(r, p, len);
}

static void enc_connect(struct recw *w, const struct store_connect *c)
{
	recw_u64(w, c->conn);
	recw_u8(w, c->clean);
	recw_u16(w, c->keepalive);
	recw_u8(w, c->will_flag);
	recw_u8(w, c->will_qos);
	recw_u8(w, c->will_retain);
	enc_cstr(w, c->remote);
	recw_str(w, c->will_topic, c->will_topic_len);
	recw_bytes(w, c->will_payload, c->will_payload_len);
}

static void dec_connect(struct recr *r, struct store_connect *c)
{
	const uint8_t *topic;

	c->conn = recr_u64(r);
	c->clean = recr_u8(r);
	c->keepalive = recr_u16(r);
	c->will_flag = recr_u8(r);
	c->will_qos = recr_u8(r);
	c->will_retain = recr_u8(r);
	r->err |= c->will_qos > 2 || c->will_retain > 1;  /* corrupt: no CONNECT has them */
	c->remote = dec_cstr(r);
	recr_str(r, &topic, &c->will_topic_len);
	c->will_topic = (const char *)topic;
	recr_bytes(r, &c->will_payload, &c->will_payload_len);
}

/* Format 6: what a CONNECT adds for MQTT 5. */
static void enc_connect6(struct recw *w, const struct store_connect *c)
{
	recw_u32(w, c->session_expiry);
	recw_u32(w, c->will_delay);
	recw_u32(w, c->will_expiry);
	recw_bytes(w, c->will_props, c->will_props_len);
}

static void dec_connect6(struct recr *r, struct store_connect *c)
{
	c->session_expiry = recr_u32(r);
	c->will_delay = recr_u32(r);
	c->will_expiry = recr_u32(r);
	recr_bytes(r, &c->will_props, &c->will_props_len);
}

static void enc_token(struct recw *w, const struct store_token *t)
{
	recw_u8(w, t->on);
	recw_bytes(w, t->rules, t->on ? t->len : 0);
}

/* A token flag other than 0 or 1 is corrupt (r->err): the session is skipped. */
static void dec_token(struct recr *r, struct store_token *t)
{
	uint8_t on = recr_u8(r);

	if (on > 1)
		r->err = true;
	t->on = on == 1;
	recr_bytes(r, &t->rules, &t->len);
	if (!t->len)
		t->rules = NULL;
}

/* Format 7's value (store_int.h): only the tests of reading older stores write one now. */
void store_session_encode7(struct recw *w, const struct store_session *s)
{
	recw_reset(w);
	recw_u8(w, s->clean);
	recw_u64(w, s->last_seen_ms);
	recw_str(w, s->client_id, s->client_id_len);
	/* Online, the CONNECT below has the remote: "" here says "same as there". */
	enc_cstr(w, s->online && s->remote && s->cx.remote && strcmp(s->remote, s->cx.remote) == 0 ?
		 "" : s->remote);
	recw_u16(w, s->n_qos2_ids);
	for (uint16_t i = 0; i < s->n_qos2_ids; i++)
		recw_u16(w, s->qos2_ids[i]);
	recw_u8(w, s->online);
	if (s->online)
		enc_connect(w, &s->cx);
	recw_u8(w, s->pending);
	if (s->pending)
		enc_connect(w, &s->pend);
	/* Format 3, at the end so that a format 2 value reads as "no user names". */
	recw_str(w, s->user, s->user_len);
	if (s->pending)
		recw_str(w, s->pend.user, s->pend.user_len);
	/* Format 4, after them so that a format 3 value reads as "no token". */
	enc_token(w, &s->token);
	if (s->pending)
		enc_token(w, &s->pend_token);
	/* Format 6, after them so that a format 5 value reads as without it. */
	recw_u32(w, s->expiry);
	recw_u8(w, s->will_held);
	if (s->will_held) {
		recw_u64(w, s->will_at_ms);
		enc_connect(w, &s->will);
		enc_connect6(w, &s->will);
	}
	if (s->online)
		enc_connect6(w, &s->cx);
	if (s->pending)
		enc_connect6(w, &s->pend);
}

/*
 * What a format 6 value ends with; an older one's sessions and CONNECTs
 * last as their clean flag says (with the connection, or for ever), and
 * hold no will back.
 */
static void dec_session6(struct recr *r, struct store_session *s)
{
	uint8_t held;

	s->expiry = s->clean ? 0 : REC_EXPIRY_NEVER;
	s->cx.session_expiry = s->cx.clean ? 0 : REC_EXPIRY_NEVER;
	s->pend.session_expiry = s->pend.clean ? 0 : REC_EXPIRY_NEVER;
	s->will_held = false;
	if (!recr_left(r))
		return;
	s->expiry = recr_u32(r);
	held = recr_u8(r);
	r->err |= held > 1;
	s->will_held = held == 1;
	if (s->will_held) {
		s->will_at_ms = recr_u64(r);
		dec_connect(r, &s->will);
		dec_connect6(r, &s->will);
	}
	if (s->online)
		dec_connect6(r, &s->cx);
	if (s->pending)
		dec_connect6(r, &s->pend);
}

/* The user names a format 3 value ends with; a format 2 one has none ("" for all). */
static void dec_session_users(struct recr *r, struct store_session *s)
{
	const uint8_t *p;

	s->user = s->cx.user = s->pend.user = "";
	if (!recr_left(r))
		return;
	recr_str(r, &p, &s->user_len);
	if (p && s->user_len)
		s->user = (const char *)p;
	s->cx.user = s->user;
	s->cx.user_len = s->user_len;
	if (s->pending) {
		recr_str(r, &p, &s->pend.user_len);
		if (p && s->pend.user_len)
			s->pend.user = (const char *)p;
	}
}

/* The tokens a format 4 value ends with; an older one has none. */
static void dec_session_tokens(struct recr *r, struct store_session *s)
{
	s->token = s->pend_token = (struct store_token){ 0 };
	if (!recr_left(r))
		return;
	dec_token(r, &s->token);
	if (s->pending)
		dec_token(r, &s->pend_token);
}

/* The n inbound QoS 2 ids that follow, copied out to *ids (values carry no alignment). */
static int dec_qos2_ids(struct recr *r, uint16_t n, struct store_session *s, uint16_t **ids)
{
	s->n_qos2_ids = n;
	if (n && !r->err) {
		*ids = malloc((size_t)n * sizeof(**ids));
		if (!*ids)
			return -1;
		for (uint16_t i = 0; i < n; i++)
			(*ids)[i] = recr_u16(r);
	}
	s->qos2_ids = *ids;
	return 0;
}

/* ---- sessions, format 8 ----------------------------------------------- */

/*
 * A format 8 value starts with S8_MARK and the session's flags: no older
 * value starts with that bit (theirs start with the clean flag, 0 or 1),
 * so both are read, each by its own decoder. Numbers are varints (seven
 * bits a byte, low first, at most ten), and what a session does not have
 * takes no room.
 */
#define S8_MARK       0x80
#define S8_CLEAN      0x01
#define S8_ONLINE     0x02
#define S8_PENDING    0x04
#define S8_WILL_HELD  0x08
#define S8_TOKEN      0x10
#define S8_REMOTE_CX  0x20    /* its remote is its CONNECT's: not written twice */
/* A CONNECT's flags byte: will QoS in bits 3-4. */
#define C8_CLEAN      0x01
#define C8_WILL       0x02
#define C8_RETAIN     0x04
#define C8_QOS_SHIFT  3

static void enc_varint(struct recw *w, uint64_t v)
{
	do {
		recw_u8(w, (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0)));
		v >>= 7;
	} while (v);
}

/* A varint up to max; more, or longer than ten bytes, is corrupt (r->err). */
static uint64_t dec_varint(struct recr *r, uint64_t max)
{
	uint64_t v = 0;

	for (unsigned shift = 0; shift < 70 && !r->err; shift += 7) {
		uint8_t b = recr_u8(r);

		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			r->err |= v > max;
			return r->err ? 0 : v;
		}
	}
	r->err = true;
	return 0;
}

/* A varint count of bytes, then the bytes. */
static void enc_bytes8(struct recw *w, const void *p, size_t len)
{
	uint8_t *dst;

	enc_varint(w, len);
	if (len && (dst = recw_reserve(w, len)))
		memcpy(dst, p, len);
}

/* NULL for none (or corrupt: r->err). */
static const uint8_t *dec_bytes8(struct recr *r, uint32_t max, uint32_t *len)
{
	*len = (uint32_t)dec_varint(r, max);
	return *len ? recr_take(r, *len) : NULL;
}

/* A string with its NUL, for log lines: its length (no NUL) as a varint, then it. */
static void enc_cstr8(struct recw *w, const char *s)
{
	enc_bytes8(w, s ? s : "", strnlen(s ? s : "", UINT16_MAX - 1) + 1);
	if (w->len && !w->oom)
		w->buf[w->len - 1] = '\0';
}

static const char *dec_cstr8(struct recr *r)
{
	uint32_t len;
	const uint8_t *p = dec_bytes8(r, UINT16_MAX, &len);

	return cstr_at(r, p, len);
}

static void enc_connect8(struct recw *w, const struct store_connect *c)
{
	recw_u64(w, c->conn);
	recw_u8(w, (uint8_t)((c->clean ? C8_CLEAN : 0) | (c->will_flag ? C8_WILL : 0) |
			     (c->will_retain ? C8_RETAIN : 0) | (c->will_qos & 3) << C8_QOS_SHIFT));
	enc_varint(w, c->keepalive);
	enc_varint(w, c->session_expiry);
	enc_cstr8(w, c->remote);
	if (!c->will_flag)
		return;
	enc_bytes8(w, c->will_topic, c->will_topic_len);
	enc_bytes8(w, c->will_payload, c->will_payload_len);
	enc_varint(w, c->will_delay);
	enc_varint(w, c->will_expiry);
	enc_bytes8(w, c->will_props, c->will_props_len);
}

static void dec_connect8(struct recr *r, struct store_connect *c)
{
	uint8_t flags;
	uint32_t len;

	c->conn = recr_u64(r);
	flags = recr_u8(r);
	r->err |= flags >= 3 << C8_QOS_SHIFT;
	c->clean = flags & C8_CLEAN;
	c->will_flag = flags & C8_WILL;
	c->will_retain = (flags & C8_RETAIN) != 0;
	c->will_qos = flags >> C8_QOS_SHIFT;
	c->keepalive = (uint16_t)dec_varint(r, UINT16_MAX);
	c->session_expiry = (uint32_t)dec_varint(r, UINT32_MAX);
	c->remote = dec_cstr8(r);
	if (!c->will_flag)
		return;
	c->will_topic = (const char *)dec_bytes8(r, UINT16_MAX, &len);
	c->will_topic_len = (uint16_t)len;
	c->will_payload = dec_bytes8(r, UINT32_MAX, &c->will_payload_len);
	c->will_delay = (uint32_t)dec_varint(r, UINT32_MAX);
	c->will_expiry = (uint32_t)dec_varint(r, UINT32_MAX);
	c->will_props = dec_bytes8(r, UINT32_MAX, &c->will_props_len);
}

static void enc_session8(struct recw *w, const struct store_session *s)
{
	bool remote_cx = s->online && s->remote && s->cx.remote && strcmp(s->remote, s->cx.remote) == 0;

	recw_reset(w);
	recw_u8(w, S8_MARK | (s->clean ? S8_CLEAN : 0) | (s->online ? S8_ONLINE : 0) |
		(s->pending ? S8_PENDING : 0) | (s->will_held ? S8_WILL_HELD : 0) |
		(s->token.on ? S8_TOKEN : 0) | (remote_cx ? S8_REMOTE_CX : 0));
	enc_bytes8(w, s->client_id, s->client_id_len);
	enc_varint(w, s->last_seen_ms);
	if (!remote_cx)
		enc_cstr8(w, s->remote);
	enc_varint(w, s->expiry);
	enc_varint(w, s->n_qos2_ids);
	for (uint16_t i = 0; i < s->n_qos2_ids; i++)
		recw_u16(w, s->qos2_ids[i]);
	enc_bytes8(w, s->user, s->user_len);
	if (s->token.on)
		enc_bytes8(w, s->token.rules, s->token.len);
	if (s->online)
		enc_connect8(w, &s->cx);
	if (s->pending) {
		enc_connect8(w, &s->pend);
		enc_bytes8(w, s->pend.user, s->pend.user_len);
		recw_u8(w, s->pend_token.on);
		if (s->pend_token.on)
			enc_bytes8(w, s->pend_token.rules, s->pend_token.len);
	}
	if (s->will_held) {
		enc_varint(w, s->will_at_ms);
		enc_connect8(w, &s->will);
	}
}

/* A token's rules as format 8 has them when on; NULL for none. */
static void dec_token8(struct recr *r, struct store_token *t, bool on)
{
	t->on = on;
	t->rules = on ? dec_bytes8(r, UINT32_MAX, &t->len) : NULL;
	if (!on)
		t->len = 0;
}

static int dec_session8(struct recr *r, struct store_session *s, uint16_t **ids)
{
	uint8_t flags = recr_u8(r), pend_on;
	const uint8_t *p;
	uint32_t len;

	r->err |= (flags & ~(S8_MARK | S8_CLEAN | S8_ONLINE | S8_PENDING | S8_WILL_HELD | S8_TOKEN |
			     S8_REMOTE_CX)) != 0 || ((flags & S8_REMOTE_CX) && !(flags & S8_ONLINE));
	s->clean = flags & S8_CLEAN;
	s->online = flags & S8_ONLINE;
	s->pending = flags & S8_PENDING;
	s->will_held = flags & S8_WILL_HELD;
	p = dec_bytes8(r, UINT16_MAX, &len);
	s->client_id = p ? (const char *)p : "";
	s->client_id_len = (uint16_t)len;
	s->last_seen_ms = dec_varint(r, UINT64_MAX);
	s->remote = flags & S8_REMOTE_CX ? "" : dec_cstr8(r);
	s->expiry = (uint32_t)dec_varint(r, UINT32_MAX);
	if (dec_qos2_ids(r, (uint16_t)dec_varint(r, UINT16_MAX), s, ids) < 0)
		return -1;
	p = dec_bytes8(r, UINT16_MAX, &len);
	s->user = p ? (const char *)p : "";
	s->user_len = (uint16_t)len;
	dec_token8(r, &s->token, flags & S8_TOKEN);
	s->cx.user = s->pend.user = "";
	if (s->online) {
		dec_connect8(r, &s->cx);
		s->cx.user = s->user;
		s->cx.user_len = s->user_len;
		if (flags & S8_REMOTE_CX)
			s->remote = s->cx.remote;
	}
	if (s->pending) {
		dec_connect8(r, &s->pend);
		p = dec_bytes8(r, UINT16_MAX, &len);
		s->pend.user = p ? (const char *)p : "";
		s->pend.user_len = (uint16_t)len;
		pend_on = recr_u8(r);
		r->err |= pend_on > 1;
		dec_token8(r, &s->pend_token, pend_on == 1);
	}
	if (s->will_held) {
		s->will_at_ms = dec_varint(r, UINT64_MAX);
		dec_connect8(r, &s->will);
	}
	return recr_end(r) ? -1 : 0;
}

/* ids: room for n_qos2_ids, which the caller frees. 0, or -1 when corrupt. */
static int dec_session(const MDB_val *v, uint32_t sid, struct store_session *s, uint16_t **ids)
{
	struct recr r;
	const uint8_t *cid;
	uint8_t clean, online, pending;

	*s = (struct store_session){ .sid = sid };
	*ids = NULL;
	recr_init(&r, v->mv_data, v->mv_size);
	if (v->mv_size && *(const uint8_t *)v->mv_data & S8_MARK) {
		if (dec_session8(&r, s, ids) == 0)
			return 0;
		free(*ids);
		*ids = NULL;
		return -1;
	}
	clean = recr_u8(&r);
	s->clean = clean;
	s->last_seen_ms = recr_u64(&r);
	recr_str(&r, &cid, &s->client_id_len);
	s->client_id = cid ? (const char *)cid : "";
	s->remote = dec_cstr(&r);
	if (dec_qos2_ids(&r, recr_u16(&r), s, ids) < 0)
		return -1;
	online = recr_u8(&r);
	s->online = online;
	if (online)
		dec_connect(&r, &s->cx);
	if (online && !r.err && s->remote[0] == '\0')
		s->remote = s->cx.remote;
	pending = recr_u8(&r);
	s->pending = pending;
	if (pending)
		dec_connect(&r, &s->pend);
	dec_session_users(&r, s);
	dec_session_tokens(&r, s);
	dec_session6(&r, s);
	if (recr_end(&r) || clean > 1 || online > 1 || pending > 1) {
		free(*ids);
		*ids = NULL;
		return -1;
	}
	return 0;
}

/* Format 6: a retained message's qos byte with this bit is followed by its expiry and properties. */
#define STORE_RETAINED_V5 0x80

/* Format 2: the state byte's high bit says the message is a copy held for a worker. */
#define STORE_MSG_AT_WORKER 0x80

static void enc_msg(struct recw *w, const struct store_msg *m)
{
	recw_reset(w);
	recw_u16(w, m->packet_id);
	recw_u8(w, (uint8_t)(m->state | (m->at_worker ? STORE_MSG_AT_WORKER : 0)));
	recw_u8(w, m->qos);
	recw_u8(w, m->retain);
	recw_str(w, m->topic, m->topic_len);
	recw_bytes(w, m->payload, m->payload_len);
	/* A message with none of what later formats add is written as format 5, which reads as none. */
	if (!m->v5.expires_at && !m->v5.props_len && !m->n_sub_ids)
		return;
	/* Format 6, at the end so that a format 5 value reads as "none". */
	recw_u64(w, m->v5.expires_at);
	recw_bytes(w, m->v5.props, m->v5.props_len);
	/* Format 7, only when there are some: a message without costs no byte more. */
	if (m->n_sub_ids) {
		size_t n = (size_t)m->n_sub_ids * sizeof(uint32_t);
		uint8_t *dst;

		recw_u8(w, m->n_sub_ids);
		if ((dst = recw_reserve(w, n)) != NULL)
			rec_put_mem(dst, m->sub_ids, n);
	}
}

static void dec_v5(struct recr *r, struct store_v5 *v5)
{
	v5->expires_at = recr_u64(r);
	recr_bytes(r, &v5->props, &v5->props_len);
}

static int dec_msg(const MDB_val *v, struct store_msg *m)
{
	struct recr r;
	const uint8_t *topic;

	recr_init(&r, v->mv_data, v->mv_size);
	m->packet_id = recr_u16(&r);
	m->state = recr_u8(&r);
	m->at_worker = (m->state & STORE_MSG_AT_WORKER) != 0;
	m->state &= (uint8_t)~STORE_MSG_AT_WORKER;
	m->qos = recr_u8(&r);
	m->retain = recr_u8(&r);
	recr_str(&r, &topic, &m->topic_len);
	m->topic = (const char *)topic;
	recr_bytes(&r, &m->payload, &m->payload_len);
	m->v5 = (struct store_v5){ 0 };
	if (recr_left(&r))
		dec_v5(&r, &m->v5);
	m->n_sub_ids = 0;
	m->sub_ids = NULL;
	if (recr_left(&r)) {
		m->n_sub_ids = recr_u8(&r);
		r.err |= m->n_sub_ids == 0 || m->n_sub_ids > REC_TARGET_SUB_IDS_MAX;
		m->sub_ids = recr_take(&r, (size_t)m->n_sub_ids * sizeof(uint32_t));
	}
	return recr_end(&r) || m->qos > 2 || m->retain > 1 ? -1 : 0;
}

/* ---- mutations --------------------------------------------------------- */

void store_session_put(struct store *st, const struct store_session *s)
{
	uint8_t kb[4];
	MDB_val k = key_sid(kb, s->sid), v;

	enc_session8(&st->val, s);
	if (!store_encoded(st, &v, "encoding a session"))
		return;
	/*
	 * Session ids only grow: a new session is appended, which fills
	 * B-tree pages instead of splitting them in half (on tmpfs, every
	 * page counts in the daemon's memory).
	 */
	if (s->sid > st->sessions_max_sid) {
		int rc = mdb_put(st->txn, st->sessions, &k, &v, MDB_APPEND);

		if (rc == 0) {
			st->sessions_max_sid = s->sid;
			return;
		}
		if (rc != MDB_KEYEXIST) {
			store_fail(st, "writing a session", rc);
			return;
		}
		st->sessions_max_sid = s->sid;
	}
	store_put(st, st->sessions, &k, &v, "writing a session");
}

void store_session_del(struct store *st, uint32_t sid)
{
	uint8_t kb[4];
	MDB_val k = key_sid(kb, sid);

	store_del(st, st->sessions, &k, "deleting a session");
	store_del_prefix(st, st->subs, kb, 4, "deleting a session's subscriptions");
}

/* Subscriptions are keyed by sid + filter: that whole key, in st->kbuf. */
static bool sub_key(struct store *st, uint32_t sid, const char *filter, uint16_t len)
{
	size_t need = 4 + (size_t)len;
	uint8_t *p;

	if (need > st->kcap) {
		p = realloc(st->kbuf, need);
		if (!p)
			return false;
		st->kbuf = p;
		st->kcap = need;
	}
	put_be32(st->kbuf, sid);
	if (len)
		memcpy(st->kbuf + 4, filter, len);
	return true;
}

void store_sub_put(struct store *st, uint32_t sid, const char *filter, uint16_t len, uint8_t opts,
		   uint32_t sub_id)
{
	uint8_t v[1 + sizeof(sub_id)] = { opts };

	if (!store_wtxn(st))
		return;
	if (!sub_key(st, sid, filter, len)) {
		store_fail(st, "encoding a subscription", ENOMEM);
		return;
	}
	memcpy(v + 1, &sub_id, sizeof(sub_id));
	lkey_put(st, st->subs, st->kbuf, 4 + (size_t)len, v, sub_id ? sizeof(v) : 1, NULL, 0,
		 "writing a subscription");
}

void store_sub_del(struct store *st, uint32_t sid, const char *filter, uint16_t len)
{
	if (!store_wtxn(st))
		return;
	if (!sub_key(st, sid, filter, len)) {
		store_fail(st, "encoding a subscription", ENOMEM);
		return;
	}
	lkey_del(st, st->subs, st->kbuf, 4 + (size_t)len, "deleting a subscription");
}

/*
 * Deletes wait for the commit (or a read or put that must see them), to
 * be done last first: they come mostly in queue order (the oldest
 * messages are done first), so that is about descending key order, and
 * deleting a page's last node moves no other (LMDB packs a page's nodes
 * from its end down, in the order they were put), where deleting its
 * first one, the oldest message of an appended page, moved all the
 * others. Not sorted: qsort() may ask the kernel for the memory size,
 * which the router's seccomp filter does not allow, and the order only
 * saves work.
 */
void store_queue_del(struct store *st, uint32_t sid, uint64_t order)
{
	const struct store_qkey key = { order, sid };
	uint8_t kb[STORE_QKEY_LEN];
	MDB_val k = key_queued(kb, sid, order);

	if (!store_wtxn(st))
		return;
	if (st->n_qdel == st->cap_qdel) {
		size_t cap = st->cap_qdel ? st->cap_qdel * 2 : 256;
		void *grown = reallocarray(st->qdel, cap, sizeof(*st->qdel));

		if (!grown) {
			store_del(st, st->queue, &k, "deleting a queued message");
			return;
		}
		st->qdel = grown;
		st->cap_qdel = cap;
	}
	memcpy(st->qdel[st->n_qdel++], kb, sizeof(kb));
	if (st->n_qdel == 1 || qkey_after(key, st->qdel_max))
		st->qdel_max = key;
}

/* Do the deletes store_queue_del() keeps, into the open transaction. */
#define STORE_QDEL_KEEP 4096u    /* deletes a turn's list keeps room for (48 KiB) */

static void store_queue_flush(struct store *st)
{
	MDB_cursor *cur;
	int rc;

	if (!st->n_qdel || !st->txn)
		return;
	rc = mdb_cursor_open(st->txn, st->queue, &cur);
	if (rc == 0) {
		for (size_t i = st->n_qdel; rc == 0 && i-- > 0;) {
			MDB_val k = mval(st->qdel[i], STORE_QKEY_LEN), v;

			rc = mdb_cursor_get(cur, &k, &v, MDB_SET);
			if (rc == 0)
				rc = mdb_cursor_del(cur, 0);
			else if (rc == MDB_NOTFOUND)
				rc = 0;
		}
		mdb_cursor_close(cur);
	}
	st->n_qdel = 0;
	/* A session's whole queue deleted at once must not stay held. */
	if (st->cap_qdel > STORE_QDEL_KEEP) {
		free(st->qdel);
		st->qdel = NULL;
		st->cap_qdel = 0;
	}
	if (rc)
		store_fail(st, "deleting a queued message", rc);
}

void store_queue_put(struct store *st, uint32_t sid, uint64_t order, const struct store_msg *m)
{
	const struct store_qkey key = { order, sid };
	uint8_t kb[STORE_QKEY_LEN];
	MDB_val k = key_queued(kb, sid, order), v;

	/* A key this turn may have deleted: the delete first, as it came first. */
	if (st->n_qdel && !qkey_after(key, st->qdel_max))
		store_queue_flush(st);
	enc_msg(&st->val, m);
	if (!store_encoded(st, &v, "encoding a queued message"))
		return;
	/*
	 * A new message's key is past every other (queue order only grows,
	 * but for what a closing connection still owed): appended. queue_last
	 * is only a hint; a key that is not last after all is put as any.
	 */
	if (qkey_after(key, st->queue_last)) {
		int rc = mdb_put(st->txn, st->queue, &k, &v, MDB_APPEND);

		st->queue_last = key;
		if (rc == 0)
			return;
		if (rc != MDB_KEYEXIST) {
			store_fail(st, "writing a queued message", rc);
			return;
		}
	}
	store_put(st, st->queue, &k, &v, "writing a queued message");
}


void store_retained_put(struct store *st, const char *topic, uint16_t len, uint8_t qos,
			const uint8_t *payload, uint32_t payload_len, const struct store_v5 *v5)
{
	struct recw *w = &st->val;

	recw_reset(w);
	if (v5 && (v5->props_len || v5->expires_at)) {
		recw_u8(w, qos | STORE_RETAINED_V5);
		recw_u64(w, v5->expires_at);
		recw_bytes(w, v5->props, v5->props_len);
	} else {
		recw_u8(w, qos);
	}
	if (w->oom) {
		store_fail(st, "encoding a retained message", ENOMEM);
		return;
	}
	lkey_put(st, st->retained, topic, len, w->buf, w->len, payload, payload_len,
		 "writing a retained message");
}

void store_retained_del(struct store *st, const char *topic, uint16_t len)
{
	lkey_del(st, st->retained, topic, len, "deleting a retained message");
}

void store_meta_put(struct store *st, const char *key, uint64_t v)
{
	MDB_val k = mval(key, strlen(key)), val = mval(&v, sizeof(v));

	store_put(st, st->meta, &k, &val, "writing a counter");
}

void store_outbox_put(struct store *st, unsigned ring, uint64_t seq, uint16_t type,
		      const void *data, uint32_t len)
{
	MDB_txn *txn = store_wtxn(st);
	uint8_t kb[12];
	MDB_val k = key_ordered(kb, ring, seq), v = mval(NULL, sizeof(type) + (size_t)len);
	int rc;

	if (!txn)
		return;
	rc = mdb_put(txn, st->outbox, &k, &v, MDB_RESERVE);
	if (rc) {
		store_fail(st, "writing a held record", rc);
		return;
	}
	memcpy(v.mv_data, &type, sizeof(type));
	if (len)
		memcpy((uint8_t *)v.mv_data + sizeof(type), data, len);
}

void store_outbox_del(struct store *st, unsigned ring, uint64_t seq)
{
	store_del_ordered(st, st->outbox, ring, seq, "deleting a held record");
}

static void store_drop(struct store *st, MDB_dbi dbi, const char *what)
{
	MDB_txn *txn = store_wtxn(st);
	int rc;

	if (!txn)
		return;
	rc = mdb_drop(txn, dbi, 0);
	if (rc)
		store_fail(st, what, rc);
}

void store_outbox_clear(struct store *st)
{
	store_drop(st, st->outbox, "deleting the held records");
}

/* ---- upgrade ----------------------------------------------------------- */

int store_queue_upgrade(struct store *st, MDB_txn *txn)
{
	MDB_dbi old;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t moved = 0, dropped = 0;
	int rc = mdb_dbi_open(txn, "queue", 0, &old);

	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	rc = mdb_cursor_open(txn, old, &cur);
	if (rc)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		uint8_t kb[STORE_QKEY_LEN];
		MDB_val nk;

		if (k.mv_size != 12) {
			dropped++;
			continue;
		}
		nk = key_queued(kb, get_be32(k.mv_data), get_be64((const uint8_t *)k.mv_data + 4));
		rc = mdb_put(txn, st->queue, &nk, &v, 0);
		if (rc)
			break;
		moved++;
	}
	mdb_cursor_close(cur);
	if (rc != MDB_NOTFOUND)
		return rc;
	if (dropped)
		log_error("store %s: %zu corrupt queued messages were skipped", st->dir, dropped);
	if (moved)
		log_info("store %s: %zu queued messages moved to the format %d layout", st->dir,
			 moved, STORE_FORMAT);
	return mdb_drop(txn, old, 1);
}

/* ---- transactions ------------------------------------------------------ */

int store_commit(struct store *st)
{
	int rc;

	store_queue_flush(st);
	if (!st->txn)
		return st->stale ? -1 : 0;
	rc = mdb_txn_commit(st->txn);
	st->txn = NULL;
	if (rc) {
		store_fail(st, "committing", rc);
		return -1;
	}
	st->unsynced = true;
	if (st->resyncing) {
		log_info("store %s: written again in full: back in sync", st->dir);
		st->resyncing = false;
		st->warned = false;
	}
	return 0;
}

void store_abort(struct store *st)
{
	st->n_qdel = 0;
	if (st->txn)
		mdb_txn_abort(st->txn);
	st->txn = NULL;
}

bool store_stale(const struct store *st)
{
	return st->stale;
}

int store_resync_begin(struct store *st)
{
	store_abort(st);
	st->stale = false;
	if (!store_wtxn(st))
		return -1;
	st->resyncing = true;
	store_drop(st, st->sessions, "rewriting the sessions");
	store_drop(st, st->subs, "rewriting the subscriptions");
	store_drop(st, st->queue, "rewriting the queues");
	return st->stale ? -1 : 0;
}

void store_sync(struct store *st)
{
	int rc;

	if (st->kind != STORE_DISK || !st->unsynced)
		return;
	rc = mdb_env_sync(st->env, 1);
	if (rc) {
		if (!st->warned_sync)
			log_error("store %s: flushing to disk: %s (retrying every second)", st->dir,
				  mdb_strerror(rc));
		st->warned_sync = true;
		return;
	}
	st->unsynced = false;
	st->warned_sync = false;
}

/* ---- reading ----------------------------------------------------------- */

/* The open write transaction when there is one (it sees its own writes), else a read-only one. */
static int store_rtxn(struct store *st, MDB_txn **txn, bool *own)
{
	*own = st->txn == NULL;
	if (!*own) {
		*txn = st->txn;
		return 0;
	}
	return mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
}

typedef bool (*store_entry_fn)(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx);

/* Call fn for every entry from 'from' (a key prefix) on, while fn returns true. */
static int store_scan(struct store *st, MDB_dbi dbi, const void *from, size_t from_len,
		      store_entry_fn fn, void *ctx, const char *what)
{
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	MDB_val k = mval(from, from_len), v;
	bool own;
	int rc = store_rtxn(st, &txn, &own);

	if (rc)
		goto out;
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc)
		goto out_txn;
	rc = mdb_cursor_get(cur, &k, &v, from_len ? MDB_SET_RANGE : MDB_FIRST);
	while (rc == 0 && fn(st, &k, &v, ctx))
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	mdb_cursor_close(cur);
out_txn:
	if (own)
		mdb_txn_abort(txn);
out:
	if (rc)
		log_error("store %s: reading %s: %s", st->dir, what, mdb_strerror(rc));
	return rc ? -1 : 0;
}

static void store_corrupt(struct store *st, const char *what)
{
	log_error("store %s: a corrupt %s was skipped", st->dir, what);
}

struct scan_ctx {
	void *cb;
	void *arg;
	unsigned ring;
};

static bool scan_session(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct scan_ctx *c = ctx;
	struct store_session s;
	uint16_t *ids;

	if (k->mv_size != 4 || dec_session(v, get_be32(k->mv_data), &s, &ids) < 0) {
		store_corrupt(st, "session");
		return true;
	}
	((store_session_cb)c->cb)(c->arg, &s);
	free(ids);
	return true;
}

static bool scan_sub(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct scan_ctx *c = ctx;
	MDB_val full, rest;
	uint32_t sub_id = 0;

	if (!lkey_split(k, v, &full, &rest) || full.mv_size < 4 ||
	    full.mv_size - 4 > UINT16_MAX || (rest.mv_size != 1 && rest.mv_size != 1 + sizeof(sub_id))) {
		store_corrupt(st, "subscription");
		return true;
	}
	if (rest.mv_size > 1)
		memcpy(&sub_id, (const uint8_t *)rest.mv_data + 1, sizeof(sub_id));
	((store_sub_cb)c->cb)(c->arg, get_be32(full.mv_data), (const char *)full.mv_data + 4,
			      (uint16_t)(full.mv_size - 4), *(const uint8_t *)rest.mv_data, sub_id);
	return true;
}

static bool scan_queued(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct scan_ctx *c = ctx;
	struct store_msg m;

	if (k->mv_size != STORE_QKEY_LEN || dec_msg(v, &m) < 0) {
		store_corrupt(st, "queued message");
		return true;
	}
	((store_queue_cb)c->cb)(c->arg, get_be32((const uint8_t *)k->mv_data + 8),
				get_be64(k->mv_data), &m);
	return true;
}

static bool scan_retained(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct scan_ctx *c = ctx;
	struct store_v5 v5 = { 0 };
	MDB_val full, rest;
	struct recr r;
	uint8_t qos;

	if (!lkey_split(k, v, &full, &rest) || !full.mv_size || full.mv_size > UINT16_MAX ||
	    rest.mv_size < 1 || rest.mv_size - 1 > UINT32_MAX)
		goto corrupt;
	recr_init(&r, rest.mv_data, rest.mv_size);
	qos = recr_u8(&r);
	if (qos & STORE_RETAINED_V5) {
		dec_v5(&r, &v5);
		if (r.err)
			goto corrupt;
	}
	((store_retained_cb)c->cb)(c->arg, full.mv_data, (uint16_t)full.mv_size,
				   qos & (uint8_t)~STORE_RETAINED_V5, r.p,
				   (uint32_t)recr_left(&r), &v5);
	return true;
corrupt:
	store_corrupt(st, "retained message");
	return true;
}

static bool scan_outbox(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct scan_ctx *c = ctx;
	uint16_t type;

	if (k->mv_size != 12 || get_be32(k->mv_data) != c->ring)
		return false;
	if (v->mv_size < sizeof(type) || v->mv_size - sizeof(type) > UINT32_MAX) {
		store_corrupt(st, "held record");
		return true;
	}
	memcpy(&type, v->mv_data, sizeof(type));
	((store_outbox_cb)c->cb)(c->arg, get_be64((const uint8_t *)k->mv_data + 4), type,
				 (const uint8_t *)v->mv_data + sizeof(type),
				 (uint32_t)(v->mv_size - sizeof(type)));
	return true;
}

/* Every entry of dbi, decoded by scan and handed to cb. */
static int store_each(struct store *st, MDB_dbi dbi, store_entry_fn scan, void *cb, void *arg,
		      const char *what)
{
	struct scan_ctx c = { cb, arg, 0 };

	return store_scan(st, dbi, NULL, 0, scan, &c, what);
}

int store_each_session(struct store *st, store_session_cb cb, void *arg)
{
	return store_each(st, st->sessions, scan_session, (void *)cb, arg, "sessions");
}

int store_each_sub(struct store *st, store_sub_cb cb, void *arg)
{
	return store_each(st, st->subs, scan_sub, (void *)cb, arg, "subscriptions");
}

int store_each_queued(struct store *st, store_queue_cb cb, void *arg)
{
	store_queue_flush(st);
	return store_each(st, st->queue, scan_queued, (void *)cb, arg, "queued messages");
}

int store_each_retained(struct store *st, store_retained_cb cb, void *arg)
{
	return store_each(st, st->retained, scan_retained, (void *)cb, arg, "retained messages");
}

int store_each_outbox(struct store *st, unsigned ring, store_outbox_cb cb, void *arg)
{
	struct scan_ctx c = { (void *)cb, arg, ring };
	uint8_t kb[4];

	put_be32(kb, ring);
	return store_scan(st, st->outbox, kb, sizeof(kb), scan_outbox, &c, "held records");
}

bool store_meta_get(struct store *st, const char *key, uint64_t *out)
{
	MDB_txn *txn;
	MDB_val k = mval(key, strlen(key)), v;
	bool own, ok = false;

	if (store_rtxn(st, &txn, &own))
		return false;
	if (mdb_get(txn, st->meta, &k, &v) == 0 && v.mv_size == sizeof(*out)) {
		memcpy(out, v.mv_data, sizeof(*out));
		ok = true;
	}
	if (own)
		mdb_txn_abort(txn);
	return ok;
}

/* ---- the daemon that owns the store ------------------------------------ */

bool store_same_daemon(struct store *st, const char *ident)
{
	MDB_txn *txn;
	MDB_val k = mval("daemon", 6), v;
	bool own, same = false;

	if (store_rtxn(st, &txn, &own))
		return false;
	if (mdb_get(txn, st->meta, &k, &v) == 0)
		same = v.mv_size == strlen(ident) && memcmp(v.mv_data, ident, v.mv_size) == 0;
	if (own)
		mdb_txn_abort(txn);
	return same;
}

struct sid_list {
	uint32_t *sid;
	size_t n, cap;
	bool oom;
};

static bool collect_sid(struct store *st, const MDB_val *k, const MDB_val *v, void *ctx)
{
	struct sid_list *l = ctx;
	uint32_t *grown;

	if (k->mv_size != 4)
		return true;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		grown = reallocarray(l->sid, l->cap, sizeof(*grown));
		if (!grown) {
			l->oom = true;
			return false;
		}
		l->sid = grown;
	}
	l->sid[l->n++] = get_be32(k->mv_data);
	return true;
}

/* A session of an earlier daemon: no connection holds it any more. */
static void store_session_orphan(struct store *st, uint32_t sid)
{
	uint8_t kb[4];
	MDB_val k = key_sid(kb, sid), v;
	struct store_session s;
	uint16_t *ids = NULL;
	void *copy = NULL;
	int rc;

	rc = mdb_get(st->txn, st->sessions, &k, &v);
	if (rc)
		goto fail;
	/* Decode from a copy: the put below may reuse the page the value lives in. */
	copy = malloc(v.mv_size ? v.mv_size : 1);
	if (!copy) {
		rc = ENOMEM;
		goto fail;
	}
	memcpy(copy, v.mv_data, v.mv_size);
	v.mv_data = copy;
	if (dec_session(&v, sid, &s, &ids) < 0 || s.clean) {
		/* Clean sessions end with their connection; a corrupt one cannot be resumed. */
		store_session_del(st, sid);
		goto out;
	}
	s.online = s.pending = false;
	s.last_seen_ms = STORE_SEEN_UNKNOWN;
	store_session_put(st, &s);
	goto out;
fail:
	store_fail(st, "marking a session offline", rc);
out:
	free(ids);
	free(copy);
}

/*
 * Delete the queued messages of sessions that are not in the store (those
 * store_session_orphan() just dropped): a session's queue is no key range
 * of its own to delete with it.
 */
static void store_queue_prune(struct store *st)
{
	uint8_t from[STORE_QKEY_LEN] = { 0 };
	MDB_cursor *cur;
	MDB_val k = mval(from, sizeof(from)), v;
	MDB_cursor_op op = MDB_SET_RANGE;
	int rc;

	if (!store_wtxn(st))
		return;
	store_queue_flush(st);
	rc = mdb_cursor_open(st->txn, st->queue, &cur);
	if (rc) {
		store_fail(st, "deleting the messages of dropped sessions", rc);
		return;
	}
	while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
		uint8_t kb[4];
		MDB_val sk, sv;

		op = MDB_NEXT;
		if (k.mv_size != STORE_QKEY_LEN)
			continue;
		memcpy(from, k.mv_data, sizeof(from));
		memcpy(kb, from + 8, sizeof(kb));
		sk = mval(kb, sizeof(kb));
		rc = mdb_get(st->txn, st->sessions, &sk, &sv);
		if (rc == 0)
			continue;
		if (rc != MDB_NOTFOUND || (rc = mdb_cursor_del(cur, 0)) != 0)
			break;
		/* On from the key deleted: the next one is the first at or after it. */
		k = mval(from, sizeof(from));
		op = MDB_SET_RANGE;
	}
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND)
		store_fail(st, "deleting the messages of dropped sessions", rc);
}

/* Delete meta "head/<i>" and "tail/<i>": the rings they describe are gone. */
static void store_forget_rings(struct store *st)
{
	char key[16];

	for (unsigned i = 0; i < IOTD_MAX_WORKERS; i++) {
		MDB_val k;

		snprintf(key, sizeof(key), "tail/%u", i);
		k = mval(key, strlen(key));
		store_del(st, st->meta, &k, "forgetting ring positions");
		snprintf(key, sizeof(key), "head/%u", i);
		k = mval(key, strlen(key));
		store_del(st, st->meta, &k, "forgetting ring positions");
	}
	store_outbox_clear(st);
}

int store_new_daemon(struct store *st, const char *ident, bool keep_persistent)
{
	struct sid_list l = { 0 };
	MDB_val k = mval("daemon", 6), v = mval(ident, strlen(ident));
	int rc = 0;

	if (!store_wtxn(st))
		return -1;
	if (keep_persistent) {
		if (store_scan(st, st->sessions, NULL, 0, collect_sid, &l, "sessions") < 0 ||
		    l.oom) {
			store_fail(st, "listing sessions", l.oom ? ENOMEM : EIO);
			free(l.sid);
			return -1;
		}
		for (size_t i = 0; i < l.n && !st->stale; i++)
			store_session_orphan(st, l.sid[i]);
		free(l.sid);
		store_queue_prune(st);
	} else {
		store_drop(st, st->sessions, "emptying the sessions");
		store_drop(st, st->subs, "emptying the subscriptions");
		store_drop(st, st->queue, "emptying the queues");
		store_drop(st, st->retained, "emptying the retained messages");
	}
	store_forget_rings(st);
	store_put(st, st->meta, &k, &v, "claiming the store");
	rc = store_commit(st);
	return rc;
}
