/*
 * rec.c - encoding and decoding of the data-plane records that workers and
 * the router exchange through the rings (layouts in rec.h).
 *
 * Owns the field encoding only: which fields a record type carries is the
 * business of the code that writes and reads it. Integers are in host
 * order (both ends are the same binary) and copied with memcpy because
 * payloads carry no alignment guarantee.
 */
#include <stdlib.h>
#include <string.h>

#include "iotd.h"
#include "rec.h"

#define RECW_MIN_CAP 256

/* ---- writer ------------------------------------------------------------ */

void recw_init(struct recw *w)
{
	*w = (struct recw){ 0 };
}

void recw_free(struct recw *w)
{
	free(w->buf);
	recw_init(w);
}

void recw_reset(struct recw *w)
{
	/* Keep the buffer: a writer is reused for every record of a batch. */
	w->len = 0;
	w->oom = false;
}

/* Room for n more bytes? Once an allocation failed, never: the record is lost anyway. */
static bool recw_grow(struct recw *w, size_t n)
{
	size_t cap = w->cap ? w->cap : RECW_MIN_CAP;
	uint8_t *buf;

	if (w->oom)
		return false;
	if (n <= w->cap - w->len)
		return true;
	if (n > SIZE_MAX / 2 - w->len)
		goto fail;
	while (cap - w->len < n)
		cap *= 2;
	buf = realloc(w->buf, cap);
	if (!buf)
		goto fail;
	w->buf = buf;
	w->cap = cap;
	return true;
fail:
	w->oom = true;
	return false;
}

static void recw_put(struct recw *w, const void *p, size_t n)
{
	if (!recw_grow(w, n))
		return;
	if (n)          /* p may be NULL for an empty string */
		memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void recw_u8(struct recw *w, uint8_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_u16(struct recw *w, uint16_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_u32(struct recw *w, uint32_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_u64(struct recw *w, uint64_t v)
{
	recw_put(w, &v, sizeof(v));
}

void recw_str(struct recw *w, const void *p, uint16_t len)
{
	recw_u16(w, len);
	recw_put(w, p, len);
}

void recw_bytes(struct recw *w, const void *p, uint32_t len)
{
	recw_u32(w, len);
	recw_put(w, p, len);
}

/*
 * A patch outside what was written is a bug in the caller; marking the
 * record incomplete keeps it from being sent instead of corrupting memory.
 */
static void recw_patch(struct recw *w, size_t off, const void *v, size_t n)
{
	if (w->oom)
		return;
	if (off > w->len || n > w->len - off) {
		w->oom = true;
		return;
	}
	memcpy(w->buf + off, v, n);
}

void recw_patch_u16(struct recw *w, size_t off, uint16_t v)
{
	recw_patch(w, off, &v, sizeof(v));
}

void recw_patch_u32(struct recw *w, size_t off, uint32_t v)
{
	recw_patch(w, off, &v, sizeof(v));
}

/* ---- reader ------------------------------------------------------------ */

void recr_init(struct recr *r, const void *p, size_t len)
{
	r->p = p;
	r->end = len ? r->p + len : r->p;   /* NULL + 0 is undefined */
	r->err = false;
}

/*
 * The next n bytes, or NULL on overrun. After the first overrun every read
 * fails, so a decoder can read a whole record and check err once.
 */
static const uint8_t *recr_take(struct recr *r, size_t n)
{
	const uint8_t *p = r->p;

	if (r->err)
		return NULL;
	if (n > (size_t)(r->end - r->p)) {
		r->err = true;
		return NULL;
	}
	if (n)
		r->p += n;
	return p;
}

uint8_t recr_u8(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint8_t));

	return p ? *p : 0;
}

uint16_t recr_u16(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint16_t));
	uint16_t v = 0;

	if (p)
		memcpy(&v, p, sizeof(v));
	return v;
}

uint32_t recr_u32(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint32_t));
	uint32_t v = 0;

	if (p)
		memcpy(&v, p, sizeof(v));
	return v;
}

uint64_t recr_u64(struct recr *r)
{
	const uint8_t *p = recr_take(r, sizeof(uint64_t));
	uint64_t v = 0;

	if (p)
		memcpy(&v, p, sizeof(v));
	return v;
}

void recr_str(struct recr *r, const uint8_t **p, uint16_t *len)
{
	uint16_t n = recr_u16(r);

	*p = recr_take(r, n);
	*len = *p ? n : 0;
}

void recr_bytes(struct recr *r, const uint8_t **p, uint32_t *len)
{
	uint32_t n = recr_u32(r);

	*p = recr_take(r, n);
	*len = *p ? n : 0;
}

int recr_end(const struct recr *r)
{
	return !r->err && r->p == r->end ? 0 : -1;
}

const char *rec_type_name(int type)
{
	static const char *const names[REC_TYPE_MAX] = {
		[0] = "PAD",
		[REC_CONNECT] = "CONNECT",
		[REC_SUBSCRIBE] = "SUBSCRIBE",
		[REC_UNSUBSCRIBE] = "UNSUBSCRIBE",
		[REC_PUBLISH] = "PUBLISH",
		[REC_SESSION_MSG] = "SESSION_MSG",
		[REC_CLOSE] = "CLOSE",
		[REC_CONNACK] = "CONNACK",
		[REC_SUBACK] = "SUBACK",
		[REC_UNSUBACK] = "UNSUBACK",
		[REC_DELIVER] = "DELIVER",
		[REC_KICK] = "KICK",
		[REC_MSG_STATE] = "MSG_STATE",
		[REC_QOS2_IN] = "QOS2_IN",
		[REC_ROUTE] = "ROUTE",
	};

	if (type < 0 || type >= (int)ARRAY_SIZE(names) || !names[type])
		return "UNKNOWN";
	return names[type];
}
