/*
 * tokens.h - JSON Web Tokens for the unit tests: a key's public half as
 * PEM, and a token signed with a key (RS256, ES256 or EdDSA) from its
 * header and claims. Included after <cmocka.h>.
 */
#ifndef IOTD_TEST_TOKENS_H
#define IOTD_TEST_TOKENS_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "b64.h"

static inline char *public_pem(EVP_PKEY *k)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out;
	long n;

	assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
	n = BIO_get_mem_data(b, &data);
	out = strndup(data, (size_t)n);
	BIO_free(b);
	return out;
}

static inline void b64url(const void *data, size_t len, char *out, size_t cap)
{
	assert_true(b64_encode(B64_URL, data, len, out, cap) >= 0);
}

/* JOSE's signature of data with k: RS256, ES256 (r || s) or EdDSA. */
static inline size_t sign(EVP_PKEY *k, const char *data, uint8_t *sig)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ed = EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519;
	uint8_t der[600];
	size_t len = sizeof(der);

	assert_int_equal(EVP_DigestSignInit(ctx, NULL, ed ? NULL : EVP_sha256(), NULL, k), 1);
	assert_int_equal(EVP_DigestSign(ctx, der, &len, (const uint8_t *)data, strlen(data)), 1);
	EVP_MD_CTX_free(ctx);
	if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
		const uint8_t *p = der;
		ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &p, (long)len);

		assert_non_null(s);
		BN_bn2binpad(ECDSA_SIG_get0_r(s), sig, 32);
		BN_bn2binpad(ECDSA_SIG_get0_s(s), sig + 32, 32);
		ECDSA_SIG_free(s);
		return 64;
	}
	memcpy(sig, der, len);
	return len;
}

/* header.payload.signature, the header and claims given as JSON text. */
static inline char *token_with(EVP_PKEY *k, const char *header, const char *claims)
{
	static char tok[8192];
	uint8_t sig[600];
	size_t n, slen;

	b64url(header, strlen(header), tok, sizeof(tok));
	n = strlen(tok);
	tok[n++] = '.';
	b64url(claims, strlen(claims), tok + n, sizeof(tok) - n);
	n = strlen(tok);
	slen = sign(k, tok, sig);
	tok[n++] = '.';
	b64url(sig, slen, tok + n, sizeof(tok) - n);
	return tok;
}

#endif
