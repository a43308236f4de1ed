/*
 * jwt.c - JWT verification (jwt.h): the key file, the token's three parts,
 * the signature, the claims.
 *
 * Owns the keys (OpenSSL EVP_PKEYs, each with the one algorithm it
 * verifies) and, after a successful verification, the claims handed to
 * the caller. Signatures are checked by OpenSSL's EVP_DigestVerify; the
 * only conversion done here is ES256's: JOSE sends the two 32-byte
 * integers r and s side by side, OpenSSL wants them in a DER ECDSA-Sig-Value.
 * The header and the claims are read by the strict reader in json.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "acl.h"
#include "b64.h"
#include "json.h"
#include "jwt.h"
#include "textfile.h"

#define JWT_USER_MAX 65535

enum jwt_alg { ALG_RS256, ALG_ES256, ALG_EDDSA, ALG_COUNT };

static const char *const alg_names[ALG_COUNT] = { "RS256", "ES256", "EdDSA" };

struct jwt_key {
	EVP_PKEY *pkey;
	enum jwt_alg alg;
};

struct jwt_keys {
	struct jwt_key k[JWT_MAX_KEYS];
	size_t n;
};

/* ---- the key file ---- */

/* The algorithm this key verifies, or a reason it verifies none. */
static const char *key_alg(EVP_PKEY *pkey, enum jwt_alg *alg)
{
	char group[64];

	switch (EVP_PKEY_get_base_id(pkey)) {
	case EVP_PKEY_RSA:
		if (EVP_PKEY_get_bits(pkey) < 2048)
			return "an RSA key shorter than 2048 bits";
		*alg = ALG_RS256;
		return NULL;
	case EVP_PKEY_EC:
		if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL) != 1 ||
		    strcmp(group, "prime256v1") != 0)
			return "an EC key not on P-256";
		*alg = ALG_ES256;
		return NULL;
	case EVP_PKEY_ED25519:
		*alg = ALG_EDDSA;
		return NULL;
	default:
		return "a key of a kind iotd does not take (RSA, EC P-256 or Ed25519)";
	}
}

/* One PEM block, already read: a public key, added to keys. */
static const char *keys_add(struct jwt_keys *keys, const char *name, const char *header,
			    const unsigned char *data, long len)
{
	const unsigned char *p = data;
	EVP_PKEY *pkey;
	const char *why;

	if (strcmp(name, "PUBLIC KEY") != 0)
		return "not a PUBLIC KEY block";
	if (header[0] != '\0')
		return "a PUBLIC KEY block with headers";
	if (keys->n == JWT_MAX_KEYS)
		return "more keys than iotd takes in one file (16)";
	pkey = d2i_PUBKEY(NULL, &p, len);
	if (!pkey || p != data + len) {
		EVP_PKEY_free(pkey);
		return "not a public key OpenSSL can read";
	}
	why = key_alg(pkey, &keys->k[keys->n].alg);
	if (why) {
		EVP_PKEY_free(pkey);
		return why;
	}
	keys->k[keys->n++].pkey = pkey;
	return NULL;
}

int jwt_keys_parse(const char *pem, size_t len, struct jwt_keys **out, char *err, size_t errlen)
{
	struct jwt_keys *keys;
	BIO *bio;
	size_t block = 0;
	int rc = -1;

	if (len > JWT_MAX_KEY_FILE) {
		snprintf(err, errlen, "larger than %u bytes", JWT_MAX_KEY_FILE);
		return -1;
	}
	keys = calloc(1, sizeof(*keys));
	bio = BIO_new_mem_buf(pem, (int)len);
	if (!keys || !bio) {
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	for (;;) {
		char *name = NULL, *header = NULL;
		unsigned char *data = NULL;
		long dlen = 0;
		const char *why;

		if (PEM_read_bio(bio, &name, &header, &data, &dlen) != 1) {
			unsigned long e = ERR_peek_last_error();

			if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
				if (keys->n == 0)
					snprintf(err, errlen, "no PUBLIC KEY block");
				else
					rc = 0;
			} else {
				snprintf(err, errlen, "block %zu: not PEM OpenSSL can read", block + 1);
			}
			break;
		}
		block++;
		why = keys_add(keys, name, header, data, dlen);
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_free(data);
		if (why) {
			snprintf(err, errlen, "block %zu: %s", block, why);
			break;
		}
	}
done:
	ERR_clear_error();
	BIO_free(bio);
	if (rc == 0)
		*out = keys;
	else
		jwt_keys_free(keys);
	return rc;
}

int jwt_keys_load(const char *path, struct jwt_keys **out, char *err, size_t errlen)
{
	struct textfile f;

	if (textfile_open(&f, path, JWT_MAX_KEY_FILE, err, errlen) < 0)
		return -1;
	return textfile_close(&f, jwt_keys_parse(f.text, f.len, out, f.err, sizeof(f.err)),
			      err, errlen);
}

void jwt_keys_free(struct jwt_keys *keys)
{
	if (!keys)
		return;
	for (size_t i = 0; i < keys->n; i++)
		EVP_PKEY_free(keys->k[i].pkey);
	free(keys);
}

size_t jwt_keys_count(const struct jwt_keys *keys)
{
	return keys->n;
}

/* ---- signatures ---- */

/* JOSE's r || s (32 bytes each) as DER; false when it is not 64 bytes. */
static bool es256_der(const uint8_t *sig, size_t len, uint8_t *der, size_t cap, size_t *der_len)
{
	ECDSA_SIG *s;
	BIGNUM *r, *sv;
	unsigned char *p = der;
	int n;

	if (len != 64)
		return false;
	s = ECDSA_SIG_new();
	r = BN_bin2bn(sig, 32, NULL);
	sv = BN_bin2bn(sig + 32, 32, NULL);
	if (!s || !r || !sv || ECDSA_SIG_set0(s, r, sv) != 1) {
		ECDSA_SIG_free(s);
		BN_free(r);
		BN_free(sv);
		return false;
	}
	n = i2d_ECDSA_SIG(s, NULL);
	if (n <= 0 || (size_t)n > cap) {
		ECDSA_SIG_free(s);
		return false;
	}
	n = i2d_ECDSA_SIG(s, &p);
	ECDSA_SIG_free(s);
	*der_len = (size_t)n;
	return n > 0;
}

static bool sig_ok(const struct jwt_key *k, const uint8_t *sig, size_t slen,
		   const char *data, size_t dlen)
{
	EVP_MD_CTX *ctx;
	uint8_t der[80];
	bool ok = false;

	if (k->alg == ALG_ES256) {
		if (!es256_der(sig, slen, der, sizeof(der), &slen))
			return false;
		sig = der;
	}
	ctx = EVP_MD_CTX_new();
	if (ctx && EVP_DigestVerifyInit(ctx, NULL, k->alg == ALG_EDDSA ? NULL : EVP_sha256(),
					NULL, k->pkey) == 1 &&
	    EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)data, dlen) == 1)
		ok = true;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return ok;
}

/* ---- the token ---- */

struct jwt_part {
	uint8_t *bytes;
	size_t len;
};

static bool part_decode(const char *s, size_t len, struct jwt_part *out)
{
	ssize_t n;

	out->bytes = malloc(b64_decoded_max(len));
	if (!out->bytes)
		return false;
	n = b64_decode(B64_URL, s, len, out->bytes, b64_decoded_max(len));
	if (n <= 0)
		return false;
	out->len = (size_t)n;
	return true;
}

static bool part_json(const struct jwt_part *part, size_t max, struct json_doc *doc)
{
	struct json_limits lim = JSON_LIMITS_DEFAULT;
	char err[128];

	lim.max_bytes = max;
	if (json_parse((const char *)part->bytes, part->len, &lim, doc, err, sizeof(err)) != 0)
		return false;
	if (json_root(doc)->type != JSON_OBJECT) {
		json_free(doc);
		return false;
	}
	return true;
}

static enum jwt_result fail(enum jwt_result r, char *err, size_t errlen, const char *why)
{
	snprintf(err, errlen, "%s", why);
	return r;
}

/* The header's algorithm, among those some key has. */
static enum jwt_result header_alg(const struct json_doc *h, const struct jwt_keys *keys,
				  enum jwt_alg *alg, char *err, size_t errlen)
{
	const struct json_value *v = json_get(h, json_root(h), "alg");
	const char *name = json_text(h, v);
	size_t i;

	if (!v || v->type != JSON_STRING)
		return fail(JWT_MALFORMED, err, errlen, "the header has no \"alg\"");
	if (json_get(h, json_root(h), "crit"))
		return fail(JWT_BAD_ALG, err, errlen, "the header has \"crit\"");
	for (i = 0; i < ALG_COUNT; i++)
		if (strcmp(name, alg_names[i]) == 0)
			break;
	if (i == ALG_COUNT) {
		snprintf(err, errlen, "alg \"%.20s\" is not one of the keys'", name);
		return JWT_BAD_ALG;
	}
	for (size_t k = 0; k < keys->n; k++) {
		if (keys->k[k].alg == (enum jwt_alg)i) {
			*alg = (enum jwt_alg)i;
			return JWT_OK;
		}
	}
	snprintf(err, errlen, "alg %s but no key of that kind", alg_names[i]);
	return JWT_BAD_ALG;
}

/* A number claim: absent (false, *present false), a whole number, or an error. */
static bool time_claim(const struct json_doc *d, const char *name, bool *present, int64_t *out)
{
	const struct json_value *v = json_get(d, json_root(d), name);

	*present = v != NULL;
	return !v || json_int64(d, v, out);
}

static enum jwt_result check_times(const struct json_doc *d, const struct jwt_options *o,
				   struct jwt_claims *c, char *err, size_t errlen)
{
	int64_t exp = 0, nbf = 0, late, early;
	bool has_exp, has_nbf;

	if (!time_claim(d, "exp", &has_exp, &exp))
		return fail(JWT_BAD_CLAIM, err, errlen, "\"exp\" is not a number");
	if (!time_claim(d, "nbf", &has_nbf, &nbf))
		return fail(JWT_BAD_CLAIM, err, errlen, "\"nbf\" is not a number");
	if (!has_exp && o->require_exp)
		return fail(JWT_BAD_CLAIM, err, errlen, "no \"exp\"");
	/* The leeway moves both bounds outwards; a sum that overflows stays at the end of the range. */
	if (__builtin_sub_overflow(o->now, (int64_t)o->leeway, &late))
		late = INT64_MIN;
	if (__builtin_add_overflow(o->now, (int64_t)o->leeway, &early))
		early = INT64_MAX;
	if (has_exp && late >= exp)
		return fail(JWT_EXPIRED, err, errlen, "expired");
	if (has_nbf && early < nbf)
		return fail(JWT_NOT_YET, err, errlen, "not valid yet (nbf)");
	c->exp = has_exp ? exp : 0;
	return JWT_OK;
}

/* A claim listing filters: absent, or an array of valid filters. */
static enum jwt_result filter_list(const struct json_doc *d, const char *name, bool *has,
				   char ***out, size_t *n, char *err, size_t errlen)
{
	const struct json_value *arr, *item = NULL;

	if (!name || !(arr = json_get(d, json_root(d), name)))
		return JWT_OK;
	if (arr->type != JSON_ARRAY || arr->len > JWT_MAX_FILTERS) {
		snprintf(err, errlen, "\"%.40s\" is not a list of at most %d filters", name, JWT_MAX_FILTERS);
		return JWT_BAD_CLAIM;
	}
	*has = true;
	*out = calloc(arr->len ? arr->len : 1, sizeof(**out));
	if (!*out)
		return fail(JWT_ERROR, err, errlen, "out of memory");
	while ((item = json_item(d, arr, item)) != NULL) {
		const char *f = json_text(d, item);

		if (item->type != JSON_STRING || !acl_filter_valid(f, item->len)) {
			snprintf(err, errlen, "\"%.40s\" holds something not a topic filter", name);
			return JWT_BAD_CLAIM;
		}
		(*out)[*n] = strdup(f);
		if (!(*out)[*n])
			return fail(JWT_ERROR, err, errlen, "out of memory");
		(*n)++;
	}
	return JWT_OK;
}

static enum jwt_result read_claims(const struct json_doc *d, const struct jwt_options *o,
				   struct jwt_claims *c, char *err, size_t errlen)
{
	const struct json_value *user = json_get(d, json_root(d), o->user_claim);
	enum jwt_result r = check_times(d, o, c, err, errlen);

	if (r != JWT_OK)
		return r;
	if (!user || user->type != JSON_STRING || user->len == 0 || user->len > JWT_USER_MAX) {
		snprintf(err, errlen, "no user name in \"%.40s\"", o->user_claim);
		return JWT_BAD_CLAIM;
	}
	c->user = strdup(json_text(d, user));
	if (!c->user)
		return fail(JWT_ERROR, err, errlen, "out of memory");
	r = filter_list(d, o->read_claim, &c->has_read, &c->read, &c->nread, err, errlen);
	if (r == JWT_OK)
		r = filter_list(d, o->write_claim, &c->has_write, &c->write, &c->nwrite, err, errlen);
	return r;
}

/* The signature, by a key of the header's algorithm, over "header.payload". */
static enum jwt_result check_signature(const struct jwt_keys *keys, enum jwt_alg alg,
				       const char *token, size_t signed_len, const char *sig64,
				       size_t sig64_len, char *err, size_t errlen)
{
	struct jwt_part sig = { 0 };
	enum jwt_result r = JWT_BAD_SIGNATURE;

	if (!part_decode(sig64, sig64_len, &sig)) {
		free(sig.bytes);
		return fail(JWT_MALFORMED, err, errlen, "the signature is not base64url");
	}
	for (size_t k = 0; k < keys->n && r != JWT_OK; k++)
		if (keys->k[k].alg == alg && sig_ok(&keys->k[k], sig.bytes, sig.len, token, signed_len))
			r = JWT_OK;
	free(sig.bytes);
	if (r != JWT_OK)
		snprintf(err, errlen, "no %s key signed it", alg_names[alg]);
	return r;
}

enum jwt_result jwt_verify(const struct jwt_keys *keys, const char *token, size_t len,
			   const struct jwt_options *opt, struct jwt_claims *claims,
			   char *err, size_t errlen)
{
	const char *d1, *d2;
	struct jwt_part header = { 0 }, payload = { 0 };
	struct json_doc h = { 0 }, p = { 0 };
	enum jwt_alg alg;
	enum jwt_result r;

	memset(claims, 0, sizeof(*claims));
	if (len > opt->max_token)
		return fail(JWT_MALFORMED, err, errlen, "longer than the token limit");
	d1 = memchr(token, '.', len);
	d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
	if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
		return fail(JWT_MALFORMED, err, errlen, "not three parts separated by '.'");
	if (!part_decode(token, (size_t)(d1 - token), &header) || !part_json(&header, len, &h)) {
		r = fail(JWT_MALFORMED, err, errlen, "the header is not a base64url JSON object");
		goto done;
	}
	r = header_alg(&h, keys, &alg, err, errlen);
	if (r != JWT_OK)
		goto done;
	r = check_signature(keys, alg, token, (size_t)(d2 - token), d2 + 1,
			    len - (size_t)(d2 + 1 - token), err, errlen);
	if (r != JWT_OK)
		goto done;
	if (!part_decode(d1 + 1, (size_t)(d2 - d1 - 1), &payload) || !part_json(&payload, len, &p)) {
		r = fail(JWT_MALFORMED, err, errlen, "the claims are not a base64url JSON object");
		goto done;
	}
	r = read_claims(&p, opt, claims, err, errlen);
done:
	if (r != JWT_OK)
		jwt_claims_free(claims);
	json_free(&h);
	json_free(&p);
	free(header.bytes);
	free(payload.bytes);
	return r;
}

void jwt_claims_free(struct jwt_claims *c)
{
	for (size_t i = 0; i < c->nread; i++)
		free(c->read[i]);
	for (size_t i = 0; i < c->nwrite; i++)
		free(c->write[i]);
	free(c->read);
	free(c->write);
	free(c->user);
	memset(c, 0, sizeof(*c));
}
