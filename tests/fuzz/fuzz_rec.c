/*
 * fuzz_rec.c - libFuzzer harness for the record reader.
 *
 * Input: one byte of record type, then the payload. The payload is decoded
 * with the layout rec.h gives that type, and every field read is written
 * back with the writer (counts patched in late, as the real writers do).
 * Whatever the bytes, decoding must not crash or read out of bounds; and a
 * record that decodes to its last byte must re-encode to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reader and writer side by side: each field is read, then written back. */
struct cp {
	struct recr r;
	struct recw w;
};

static void cp_u8(struct cp *c)
{
	recw_u8(&c->w, recr_u8(&c->r));
}

static void cp_u16(struct cp *c)
{
	recw_u16(&c->w, recr_u16(&c->r));
}

static void cp_u32(struct cp *c)
{
	recw_u32(&c->w, recr_u32(&c->r));
}

static void cp_u64(struct cp *c)
{
	recw_u64(&c->w, recr_u64(&c->r));
}

static void cp_str(struct cp *c)
{
	const uint8_t *p;
	uint16_t len;

	recr_str(&c->r, &p, &len);
	if ((p == NULL) != (len == 0 && c->r.err))
		abort();                 /* NULL exactly on error */
	recw_str(&c->w, p, len);
}

static void cp_bytes(struct cp *c)
{
	const uint8_t *p;
	uint32_t len;

	recr_bytes(&c->r, &p, &len);
	if ((p == NULL) != (len == 0 && c->r.err))
		abort();
	recw_bytes(&c->w, p, len);
}

/* A count, written as 0 and patched once the elements are copied. */
static uint32_t cp_count(struct cp *c, int bits, size_t *off)
{
	*off = c->w.len;
	if (bits == 16) {
		recw_u16(&c->w, 0);
		return recr_u16(&c->r);
	}
	recw_u32(&c->w, 0);
	return recr_u32(&c->r);
}

static void cp_patch(struct cp *c, int bits, size_t off, uint32_t n)
{
	if (bits == 16)
		recw_patch_u16(&c->w, off, (uint16_t)n);
	else
		recw_patch_u32(&c->w, off, n);
}

/* n x element; stops at the first overrun, so a huge n costs nothing. */
static void cp_list(struct cp *c, int bits, void (*elem)(struct cp *))
{
	size_t off;
	uint32_t n = cp_count(c, bits, &off), i;

	for (i = 0; i < n && !c->r.err; i++)
		elem(c);
	cp_patch(c, bits, off, i);
}

static void el_filter_qos(struct cp *c)
{
	cp_str(c);
	cp_u8(c);
}

static void el_target(struct cp *c)
{
	uint8_t qos;

	cp_u64(c);
	cp_u32(c);
	qos = recr_u8(&c->r);
	recw_u8(&c->w, qos);
	if (qos & REC_TARGET_COPY)
		cp_u64(c);
}

static void el_route_target(struct cp *c)
{
	cp_u64(c);
	cp_u8(c);
}

static void decode(struct cp *c, int type)
{
	uint8_t flags;

	switch (type) {
	case REC_CONNECT:
		cp_u64(c); cp_u8(c); cp_u16(c); cp_str(c); cp_str(c);
		cp_u8(c); cp_u8(c); cp_u8(c); cp_str(c); cp_bytes(c);
		break;
	case REC_SUBSCRIBE:
		cp_u64(c); cp_u16(c); cp_list(c, 16, el_filter_qos);
		break;
	case REC_UNSUBSCRIBE:
		cp_u64(c); cp_u16(c); cp_list(c, 16, cp_str);
		break;
	case REC_PUBLISH:
		cp_u8(c);
		flags = recr_u8(&c->r);
		recw_u8(&c->w, flags);
		cp_str(c); cp_bytes(c);
		if (flags & REC_PUB_ASK)
			cp_u64(c);
		break;
	case REC_SESSION_MSG:
		cp_u64(c); cp_u32(c); cp_u64(c); cp_u16(c); cp_u8(c); cp_u8(c); cp_u8(c);
		cp_str(c); cp_bytes(c);
		break;
	case REC_MSG_STATE:
		cp_u64(c); cp_u32(c); cp_u64(c); cp_u16(c); cp_u8(c);
		break;
	case REC_QOS2_IN:
		cp_u64(c); cp_u32(c); cp_u16(c); cp_u8(c);
		break;
	case REC_CLOSE:
		cp_u64(c); cp_u8(c); cp_list(c, 16, cp_u16);
		break;
	case REC_CONNACK:
		cp_u64(c); cp_u32(c); cp_u8(c); cp_u8(c); cp_list(c, 16, cp_u16);
		break;
	case REC_SUBACK:
		cp_u64(c); cp_u16(c); cp_list(c, 16, cp_u8);
		break;
	case REC_UNSUBACK:
		cp_u64(c); cp_u16(c);
		break;
	case REC_DELIVER:
		cp_u8(c); cp_str(c); cp_bytes(c); cp_u8(c); cp_list(c, 32, el_target);
		break;
	case REC_KICK:
		cp_u64(c);
		break;
	case REC_ROUTE:
		cp_u64(c); cp_u64(c); cp_str(c); cp_u8(c); cp_list(c, 32, el_route_target);
		break;
	default:                         /* unknown type: only an empty payload is whole */
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cp c;
	uint8_t *payload;
	size_t len;
	int type;

	if (size < 1)
		return 0;
	type = data[0];
	if (!rec_type_name(type) || !rec_type_name(-type))
		abort();
	/* A copy of exactly the payload's size, so ASan sees any read past it. */
	len = size - 1;
	payload = malloc(len ? len : 1);
	if (!payload)
		return 0;
	memcpy(payload, data + 1, len);
	recr_init(&c.r, payload, len);
	recw_init(&c.w);
	decode(&c, type);
	if (c.r.err && recr_end(&c.r) == 0)
		abort();
	if (recr_end(&c.r) == 0 && !c.w.oom &&
	    (c.w.len != len || (len && memcmp(c.w.buf, payload, len))))
		abort();                 /* decoded in full but re-encodes differently */
	recw_free(&c.w);
	free(payload);
	return 0;
}
