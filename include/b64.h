/*
 * b64.h - strict base64 for the password file (standard alphabet, with
 * padding in Mosquitto's hashes, without in Argon2's encoded form) and for
 * JWTs (base64url without padding). OpenSSL's EVP_DecodeBlock and
 * EVP_EncodeBlock do the work; this layer refuses what they would let
 * through: whitespace, characters of the other alphabet, missing or
 * extra padding, and trailing bits that are not zero (so that each byte
 * string has exactly one accepted encoding).
 */
#ifndef IOTD_B64_H
#define IOTD_B64_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum b64_form {
	B64_STD,        /* A-Z a-z 0-9 + /, padded with '=' to a multiple of 4 */
	B64_STD_NOPAD,  /* the same alphabet, no '=' */
	B64_URL,        /* A-Z a-z 0-9 - _, no '=' (RFC 7515's base64url) */
};

/* Room that decoding len characters needs at most. */
static inline size_t b64_decoded_max(size_t len)
{
	return len / 4 * 3 + 3;
}

/* Room that encoding n bytes needs, its NUL included. */
static inline size_t b64_encoded_size(size_t n)
{
	return (n + 2) / 3 * 4 + 1;
}

/* Bytes decoded into out (at most cap), or -1 when in is not strictly of the form. */
ssize_t b64_decode(enum b64_form form, const char *in, size_t len, uint8_t *out, size_t cap);

/* Characters written to out (NUL-terminated), or -1 when cap < b64_encoded_size(len). */
ssize_t b64_encode(enum b64_form form, const uint8_t *in, size_t len, char *out, size_t cap);

#endif
