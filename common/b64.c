/*
 * b64.c - strict base64 and base64url over OpenSSL's block codec (b64.h).
 *
 * The characters are checked here, then handed to EVP_DecodeBlock in
 * chunks of whole 4-character groups through a small buffer that also
 * turns base64url into the standard alphabet and pads the last group.
 */
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/evp.h>

#include "b64.h"

#define B64_CHUNK 192 /* characters per EVP_DecodeBlock call: 48 groups */

static bool b64_char_ok(enum b64_form form, unsigned char c)
{
	if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
		return true;
	if (form == B64_URL)
		return c == '-' || c == '_';
	return c == '+' || c == '/';
}

static unsigned char b64_to_std(enum b64_form form, unsigned char c)
{
	if (form != B64_URL)
		return c;
	return c == '-' ? '+' : c == '_' ? '/' : c;
}

/* Decode n (a multiple of 4, at most B64_CHUNK) characters; 3 * n / 4 bytes. */
static bool b64_block(enum b64_form form, const char *in, size_t n, size_t pad, uint8_t *out)
{
	unsigned char buf[B64_CHUNK];

	for (size_t i = 0; i < n - pad; i++)
		buf[i] = b64_to_std(form, (unsigned char)in[i]);
	memset(buf + n - pad, '=', pad);
	return EVP_DecodeBlock(out, buf, (int)n) == (int)(n / 4 * 3);
}

ssize_t b64_decode(enum b64_form form, const char *in, size_t len, uint8_t *out, size_t cap)
{
	size_t data = len, rem, tail_bytes, need, i;
	uint8_t last[3];

	if (len > SSIZE_MAX / 3)
		return -1;
	if (form == B64_STD) {
		if (len % 4 != 0)
			return -1;
		while (data > 0 && len - data < 2 && in[data - 1] == '=')
			data--;
	}
	rem = data % 4;
	if (rem == 1 || (form == B64_STD && len - data != (rem ? 4 - rem : 0)))
		return -1;
	for (i = 0; i < data; i++)
		if (!b64_char_ok(form, (unsigned char)in[i]))
			return -1;
	tail_bytes = rem ? rem - 1 : 0;
	need = data / 4 * 3 + tail_bytes;
	if (need > cap)
		return -1;
	for (i = 0; i < data - rem; i += B64_CHUNK) {
		size_t n = data - rem - i < B64_CHUNK ? data - rem - i : B64_CHUNK;

		if (!b64_block(form, in + i, n, 0, out + i / 4 * 3))
			return -1;
	}
	if (rem) {
		/* The bits past the last whole byte must be zero: one encoding per string. */
		if (!b64_block(form, in + data - rem, 4, 4 - rem, last) || last[tail_bytes] != 0)
			return -1;
		memcpy(out + data / 4 * 3, last, tail_bytes);
	}
	return (ssize_t)need;
}

ssize_t b64_encode(enum b64_form form, const uint8_t *in, size_t len, char *out, size_t cap)
{
	size_t o = 0, i;

	if (len > SSIZE_MAX / 2 || cap < b64_encoded_size(len))
		return -1;
	for (i = 0; i < len; i += 48) {
		size_t n = len - i < 48 ? len - i : 48;

		o += (size_t)EVP_EncodeBlock((unsigned char *)out + o, in + i, (int)n);
	}
	out[o] = '\0';
	if (form == B64_STD)
		return (ssize_t)o;
	while (o > 0 && out[o - 1] == '=')
		out[--o] = '\0';
	if (form == B64_URL)
		for (i = 0; i < o; i++)
			out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	return (ssize_t)o;
}
