/*
 * fuzz_jwt.c - libFuzzer harness for JWT verification (jwt.h) and the
 * JSON reader under it (json.h).
 *
 * The first byte picks what the rest is:
 *   0: a token, verified against fixed keys (RSA, P-256 and Ed25519);
 *   1: "header NUL claims", both base64url-encoded and signed here with
 *      the fixed Ed25519 key, so that what follows the signature check
 *      (the header's alg, the claims) is reached; a token that verifies
 *      must give a user name and valid filters, and its header must say
 *      EdDSA;
 *   2: JSON for json_parse, whose document is then walked: every value's
 *      end lies after it and within the document, strings are as long as
 *      they say;
 *   3: a PEM key file for jwt_keys_parse.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "acl.h"
#include "b64.h"
#include "json.h"
#include "jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Made once with `openssl genpkey ... | openssl pkey -pubout`; only their public halves are needed. */
static const char fixed_pem[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAm9UVkbZOpAnTN1gY7v+i\n"
	"j56pMS3Y+/L8UnPBiu3uIohRfkHger2CdavoCu72hT6HLJI6r57BvQrvxYrSM25j\n"
	"SxKdBhVKd17ZC7oVV1PZSkQy77pscC2Bv153wJQwEjuaibH/B/CfT5lFDtdYaX+w\n"
	"UDArIhY4x0EzcZwYO24tapXb3fMJuOb3td6mX7RwSyb4XIBCKSsZgvdEigP8Hlei\n"
	"Qj1QJBHbuuZNYORUn3RXNwRHNtpk9y6pYpd8L2OBR/wb7/EibKLGIehsSKgIqRp7\n"
	"PESZk7cbGqs/r6gY2gQho+WMhnJxcKljJIzV2HwXnZkwlhAM5Bf1IhYRkl1/nAOU\n"
	"qwIDAQAB\n"
	"-----END PUBLIC KEY-----\n"
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEydyvSEXLl35LknuNIcV6Iq63LlIB\n"
	"7B2f1i1e8KHbxt/YcTp33SAh5JyKAdme7dqZdi1hbLGZiagMCLZhJTCsNA==\n"
	"-----END PUBLIC KEY-----\n";

static EVP_PKEY *ed_key;
static struct jwt_keys *keys;

static void init(void)
{
	static const uint8_t seed[32] = "iotd fuzz_jwt fixed Ed25519 key";
	BIO *b = BIO_new(BIO_s_mem());
	char *ed_pem, *all, err[256];
	long n;

	ed_key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof(seed));
	if (!ed_key || !b || PEM_write_bio_PUBKEY(b, ed_key) != 1)
		abort();
	n = BIO_get_mem_data(b, &ed_pem);
	all = malloc(sizeof(fixed_pem) + (size_t)n);
	memcpy(all, fixed_pem, sizeof(fixed_pem) - 1);
	memcpy(all + sizeof(fixed_pem) - 1, ed_pem, (size_t)n);
	if (jwt_keys_parse(all, sizeof(fixed_pem) - 1 + (size_t)n, &keys, err, sizeof(err)) != 0 ||
	    jwt_keys_count(keys) != 3)
		abort();
	free(all);
	BIO_free(b);
}

static enum jwt_result verify(const char *tok, size_t len)
{
	struct jwt_options o = JWT_OPTIONS_DEFAULT;
	struct jwt_claims c;
	char err[256] = "";
	enum jwt_result r;

	o.now = 1700000000;
	o.leeway = 30;
	o.read_claim = "read";
	o.write_claim = "write";
	r = jwt_verify(keys, tok, len, &o, &c, err, sizeof(err));
	if (r != JWT_OK) {
		if (err[0] == '\0' || c.user || c.read || c.write)
			__builtin_trap();
		return r;
	}
	if (!c.user || !c.user[0] || c.nread > JWT_MAX_FILTERS || c.nwrite > JWT_MAX_FILTERS)
		__builtin_trap();
	for (size_t i = 0; i < c.nread; i++)
		if (!acl_filter_valid(c.read[i], strlen(c.read[i])))
			__builtin_trap();
	for (size_t i = 0; i < c.nwrite; i++)
		if (!acl_filter_valid(c.write[i], strlen(c.write[i])))
			__builtin_trap();
	jwt_claims_free(&c);
	return r;
}

/* The header of a token the Ed25519 key signed and that verified: its alg is EdDSA. */
static void check_alg(const uint8_t *header, size_t len)
{
	const struct json_limits lim = JSON_LIMITS_DEFAULT;
	const char *alg;
	struct json_doc d;
	char err[128];

	if (json_parse((const char *)header, len, &lim, &d, err, sizeof(err)) != 0)
		__builtin_trap();
	alg = json_text(&d, json_get(&d, json_root(&d), "alg"));
	if (!alg || strcmp(alg, "EdDSA") != 0)
		__builtin_trap();
	json_free(&d);
}

/* header NUL claims -> a token signed with the Ed25519 key. */
static void signed_token(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t hlen = nul ? (size_t)(nul - data) : size;
	size_t clen = nul ? size - hlen - 1 : 0;
	size_t cap = b64_encoded_size(hlen) + b64_encoded_size(clen) + b64_encoded_size(64) + 2;
	char *tok = malloc(cap);
	uint8_t sig[64];
	size_t n, slen = sizeof(sig);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	if (!tok || !ctx)
		abort();
	n = (size_t)b64_encode(B64_URL, data, hlen, tok, cap);
	tok[n++] = '.';
	n += (size_t)b64_encode(B64_URL, nul ? nul + 1 : data, clen, tok + n, cap - n);
	if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, ed_key) != 1 ||
	    EVP_DigestSign(ctx, sig, &slen, (const uint8_t *)tok, n) != 1)
		abort();
	EVP_MD_CTX_free(ctx);
	tok[n++] = '.';
	n += (size_t)b64_encode(B64_URL, sig, slen, tok + n, cap - n);
	if (verify(tok, n) == JWT_OK)
		check_alg(data, hlen);
	free(tok);
}

static void json(const uint8_t *data, size_t size)
{
	const struct json_limits lim = JSON_LIMITS_DEFAULT;
	struct json_doc d;
	char err[128];

	if (json_parse((const char *)data, size, &lim, &d, err, sizeof(err)) != 0)
		return;
	for (uint32_t i = 0; i < d.n; i++) {
		const struct json_value *v = &d.v[i];
		const char *t = json_text(&d, v);

		if (v->end <= i || v->end > d.n || (t && strlen(t) != v->len))
			__builtin_trap();
	}
	json_get(&d, json_root(&d), "sub");
	for (const struct json_value *it = json_item(&d, json_root(&d), NULL); it;
	     it = json_item(&d, json_root(&d), it))
		json_text(&d, it);
	json_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct jwt_keys *k = NULL;
	char err[256];

	if (!keys)
		init();
	if (size == 0)
		return 0;
	switch (data[0] % 4) {
	case 0:
		verify((const char *)data + 1, size - 1);
		break;
	case 1:
		signed_token(data + 1, size - 1);
		break;
	case 2:
		json(data + 1, size - 1);
		break;
	case 3:
		if (jwt_keys_parse((const char *)data + 1, size - 1, &k, err, sizeof(err)) == 0)
			jwt_keys_free(k);
		break;
	}
	return 0;
}
