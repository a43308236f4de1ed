/*
 * test_jwt.c - unit tests of JWT verification (common/jwt.c).
 *
 * Keys are made by OpenSSL when the test starts (RSA 2048, EC P-256,
 * Ed25519) and tokens are signed here with them, ES256's signature turned
 * from OpenSSL's DER into JOSE's r || s as any issuer does.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "acl.h"
#include "b64.h"
#include "jwt.h"

#include "files.h"
#include "tokens.h"

#define NOW 1700000000

enum { K_RSA, K_EC, K_ED, K_RSA2, K_EC2, K_ED2, NKEYS };

static EVP_PKEY *key[NKEYS];
static char *pem[NKEYS];          /* each key's public half */
static struct jwt_keys *keys[NKEYS];
static struct jwt_keys *all_three;

static struct jwt_keys *keys_of(const char *text)
{
	struct jwt_keys *k = NULL;
	char err[256] = "";

	if (jwt_keys_parse(text, strlen(text), &k, err, sizeof(err)) != 0)
		fail_msg("keys refused: %s", err);
	return k;
}

/* Fails unless the key file text is refused with an error containing want. */
static void keys_refused(const char *text, const char *want)
{
	struct jwt_keys *k = NULL;
	char err[256] = "";

	assert_int_equal(jwt_keys_parse(text, strlen(text), &k, err, sizeof(err)), -1);
	assert_null(k);
	assert_contains(err, want);
}

static int make_keys(void **state)
{
	char *three;

	for (int i = 0; i < NKEYS; i++) {
		switch (i % 3) {
		case 0: key[i] = EVP_RSA_gen(2048); break;
		case 1: key[i] = EVP_EC_gen("P-256"); break;
		default: key[i] = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"); break;
		}
		if (!key[i])
			return -1;
		pem[i] = public_pem(key[i]);
		keys[i] = keys_of(pem[i]);
	}
	three = malloc(strlen(pem[0]) + strlen(pem[1]) + strlen(pem[2]) + 32);
	sprintf(three, "# three keys\n%s%s\n%s", pem[0], pem[1], pem[2]);
	all_three = keys_of(three);
	free(three);
	return 0;
}

static int free_keys(void **state)
{
	for (int i = 0; i < NKEYS; i++) {
		EVP_PKEY_free(key[i]);
		free(pem[i]);
		jwt_keys_free(keys[i]);
	}
	jwt_keys_free(all_three);
	return 0;
}

static const char *alg_of(int k)
{
	return k % 3 == 0 ? "RS256" : k % 3 == 1 ? "ES256" : "EdDSA";
}

static char *token(int k, const char *claims)
{
	char header[64];

	snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg_of(k));
	return token_with(key[k], header, claims);
}

static enum jwt_result verify_opt(const struct jwt_keys *ks, const char *tok,
				  const struct jwt_options *o, struct jwt_claims *c)
{
	char err[256] = "";
	enum jwt_result r = jwt_verify(ks, tok, strlen(tok), o, c, err, sizeof(err));

	if (r != JWT_OK)
		assert_true(err[0] != '\0');
	return r;
}

static enum jwt_result verify(const struct jwt_keys *ks, const char *tok)
{
	struct jwt_options o = JWT_OPTIONS_DEFAULT;
	struct jwt_claims c;
	enum jwt_result r;

	o.now = NOW;
	r = verify_opt(ks, tok, &o, &c);
	jwt_claims_free(&c);
	return r;
}

#define VALID "{\"sub\":\"alice\",\"exp\":1700000600,\"iat\":1699999000}"

static void valid_tokens_of_each_kind(void **state)
{
	for (int k = K_RSA; k <= K_ED; k++) {
		struct jwt_options o = JWT_OPTIONS_DEFAULT;
		struct jwt_claims c;

		o.now = NOW;
		assert_int_equal(verify_opt(keys[k], token(k, VALID), &o, &c), JWT_OK);
		assert_string_equal(c.user, "alice");
		assert_int_equal(c.exp, 1700000600);
		assert_false(c.has_read);
		assert_int_equal(c.nread, 0);
		jwt_claims_free(&c);
		/* One file with all three keys: each token finds its own. */
		assert_int_equal(verify(all_three, token(k, VALID)), JWT_OK);
	}
	assert_int_equal(jwt_keys_count(all_three), 3);
}

static void signed_by_another_key(void **state)
{
	for (int k = K_RSA; k <= K_ED; k++) {
		assert_int_equal(verify(keys[k], token(k + 3, VALID)), JWT_BAD_SIGNATURE);
		assert_int_equal(verify(all_three, token(k + 3, VALID)), JWT_BAD_SIGNATURE);
	}
}

static void tampered_token(void **state)
{
	char *tok = token(K_EC, VALID), *dot = strchr(tok, '.'), other[1024];
	char claims[256];

	/* Another payload under the first one's signature. */
	b64url("{\"sub\":\"root\",\"exp\":1700000600}", 32, claims, sizeof(claims));
	snprintf(other, sizeof(other), "%.*s.%s%s", (int)(dot - tok), tok, claims, strchr(dot + 1, '.'));
	assert_int_equal(verify(keys[K_EC], other), JWT_BAD_SIGNATURE);
	/* The signature's last character changed (a bit of s). */
	tok = token(K_ED, VALID);
	tok[strlen(tok) - 2] = tok[strlen(tok) - 2] == 'A' ? 'B' : 'A';
	assert_int_equal(verify(keys[K_ED], tok), JWT_BAD_SIGNATURE);
}

static void expiry_and_not_before(void **state)
{
	struct jwt_options o = JWT_OPTIONS_DEFAULT;
	struct jwt_claims c;
	char *tok = token(K_ED, "{\"sub\":\"a\",\"exp\":1700000000,\"nbf\":1699999900}");
	char copy[2048];

	snprintf(copy, sizeof(copy), "%s", tok);
	o.now = NOW - 1;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_OK);
	jwt_claims_free(&c);
	o.now = NOW;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_EXPIRED);
	o.now = NOW + 1000;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_EXPIRED);
	o.now = 1699999899;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_NOT_YET);
	o.now = 1699999900;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_OK);
	jwt_claims_free(&c);
	/* A minute of leeway each way. */
	o.leeway = 60;
	o.now = NOW + 59;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_OK);
	jwt_claims_free(&c);
	o.now = NOW + 60;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_EXPIRED);
	o.now = 1699999840;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_OK);
	jwt_claims_free(&c);
	o.now = 1699999839;
	assert_int_equal(verify_opt(keys[K_ED], copy, &o, &c), JWT_NOT_YET);
	/* A fractional NumericDate, and extremes that must not wrap. */
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":1700000000.5}")), JWT_EXPIRED);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":1700000001.5}")), JWT_OK);
	o.now = NOW;
	o.leeway = UINT32_MAX;
	assert_int_equal(verify_opt(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":-9223372036854775808}"), &o, &c),
			 JWT_EXPIRED);
	assert_int_equal(verify_opt(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":9223372036854775807,\"nbf\":9223372036854775807}"), &o, &c),
			 JWT_NOT_YET);
	/* At the end of time: expired without leeway; with it, exp + leeway is past the range. */
	o.now = INT64_MAX;
	o.leeway = 0;
	assert_int_equal(verify_opt(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":9223372036854775807}"), &o, &c),
			 JWT_EXPIRED);
	o.leeway = 10;
	assert_int_equal(verify_opt(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":9223372036854775807}"), &o, &c),
			 JWT_OK);
	jwt_claims_free(&c);
}

static void alg_must_be_the_keys(void **state)
{
	char tok[4096];

	/* The EC key's token, its header claiming RS256: no RSA key. */
	assert_int_equal(verify(keys[K_EC], token_with(key[K_EC], "{\"alg\":\"RS256\"}", VALID)), JWT_BAD_ALG);
	/* An RSA key's signature sent as EdDSA to a file of all three: checked with Ed25519 only. */
	assert_int_equal(verify(all_three, token_with(key[K_RSA], "{\"alg\":\"EdDSA\"}", VALID)), JWT_BAD_SIGNATURE);
	assert_int_equal(verify(keys[K_RSA], token_with(key[K_RSA], "{\"alg\":\"RS512\"}", VALID)), JWT_BAD_ALG);
	assert_int_equal(verify(keys[K_RSA], token_with(key[K_RSA], "{\"alg\":\"rs256\"}", VALID)), JWT_BAD_ALG);
	assert_int_equal(verify(keys[K_RSA], token_with(key[K_RSA], "{\"typ\":\"JWT\"}", VALID)), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_RSA], token_with(key[K_RSA], "{\"alg\":256}", VALID)), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_RSA], token_with(key[K_RSA], "{\"alg\":\"RS256\",\"crit\":[\"b64\"]}", VALID)),
			 JWT_BAD_ALG);
	/* HS256 keyed with the public key's PEM: the classic confusion, refused before any MAC. */
	{
		uint8_t mac[EVP_MAX_MD_SIZE];
		unsigned int maclen;
		size_t n;

		b64url("{\"alg\":\"HS256\"}", 15, tok, sizeof(tok));
		n = strlen(tok);
		tok[n++] = '.';
		b64url(VALID, strlen(VALID), tok + n, sizeof(tok) - n);
		HMAC(EVP_sha256(), pem[K_RSA], (int)strlen(pem[K_RSA]), (const uint8_t *)tok, strlen(tok), mac, &maclen);
		n = strlen(tok);
		tok[n++] = '.';
		b64url(mac, maclen, tok + n, sizeof(tok) - n);
		assert_int_equal(verify(keys[K_RSA], tok), JWT_BAD_ALG);
	}
}

static void alg_none_refused(void **state)
{
	char tok[1024], h[64], p[256];

	b64url("{\"alg\":\"none\"}", 14, h, sizeof(h));
	b64url(VALID, strlen(VALID), p, sizeof(p));
	snprintf(tok, sizeof(tok), "%s.%s.", h, p);
	assert_int_equal(verify(all_three, tok), JWT_BAD_ALG);
	b64url("{\"alg\":\"None\"}", 14, h, sizeof(h));
	snprintf(tok, sizeof(tok), "%s.%s.", h, p);
	assert_int_equal(verify(all_three, tok), JWT_BAD_ALG);
	/* The "none" header on a validly signed token changes nothing. */
	assert_int_equal(verify(keys[K_ED], token_with(key[K_ED], "{\"alg\":\"none\"}", VALID)),
			 JWT_BAD_ALG);
}

static void bad_base64_and_shape(void **state)
{
	char tok[2048], bad[4200];
	char *d1, *d2;

	snprintf(tok, sizeof(tok), "%s", token(K_ED, VALID));
	d1 = strchr(tok, '.');
	d2 = strchr(d1 + 1, '.');
	assert_int_equal(verify(keys[K_ED], tok), JWT_OK);
	/* Standard base64's characters, padding, blanks. */
	snprintf(bad, sizeof(bad), "%s", tok);
	bad[1] = '+';
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), "%s=", tok);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), "%.*s=%s", (int)(d1 - tok), tok, d1);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), " %s", tok);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), "%.*s*%s", (int)(d2 + 1 - tok), tok, d2 + 1);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	/* Not three parts, or one empty. */
	snprintf(bad, sizeof(bad), "%.*s", (int)(d2 - tok), tok);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), "%s.%s", tok, d2 + 1);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), "%.*s.", (int)(d2 - tok), tok);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	snprintf(bad, sizeof(bad), ".%s", d1 + 1);
	assert_int_equal(verify(keys[K_ED], bad), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], ""), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], ".."), JWT_MALFORMED);
	/* An ES256 signature in OpenSSL's DER rather than r || s. */
	{
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		uint8_t der[128];
		size_t len = sizeof(der), n;

		snprintf(bad, sizeof(bad), "%s", token(K_EC, VALID));
		n = (size_t)(strrchr(bad, '.') - bad);
		bad[n] = '\0';
		assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key[K_EC]), 1);
		assert_int_equal(EVP_DigestSign(ctx, der, &len, (uint8_t *)bad, n), 1);
		EVP_MD_CTX_free(ctx);
		bad[n] = '.';
		b64url(der, len, bad + n + 1, sizeof(bad) - n - 1);
		assert_int_equal(verify(keys[K_EC], bad), JWT_BAD_SIGNATURE);
	}
}

static void too_long(void **state)
{
	struct jwt_options o = JWT_OPTIONS_DEFAULT;
	struct jwt_claims c;
	char *tok = token(K_ED, VALID);

	o.now = NOW;
	o.max_token = strlen(tok);
	assert_int_equal(verify_opt(keys[K_ED], tok, &o, &c), JWT_OK);
	jwt_claims_free(&c);
	o.max_token--;
	assert_int_equal(verify_opt(keys[K_ED], tok, &o, &c), JWT_MALFORMED);
}

static void bad_json(void **state)
{
	assert_int_equal(verify(keys[K_ED], token_with(key[K_ED], "{\"alg\":\"EdDSA\"", VALID)), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], token_with(key[K_ED], "[\"EdDSA\"]", VALID)), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], token_with(key[K_ED], "{\"alg\":\"EdDSA\",\"alg\":\"none\"}", VALID)),
			 JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":1700000600")), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":1700000600,}")), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "\"alice\"")), JWT_MALFORMED);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"sub\":\"root\",\"exp\":1700000600}")),
			 JWT_MALFORMED);
}

static void missing_or_wrong_claims(void **state)
{
	struct jwt_options o = JWT_OPTIONS_DEFAULT;
	struct jwt_claims c;

	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"exp\":1700000600}")), JWT_BAD_CLAIM);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"\",\"exp\":1700000600}")), JWT_BAD_CLAIM);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":42,\"exp\":1700000600}")), JWT_BAD_CLAIM);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\"}")), JWT_BAD_CLAIM);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":\"1700000600\"}")), JWT_BAD_CLAIM);
	assert_int_equal(verify(keys[K_ED], token(K_ED, "{\"sub\":\"a\",\"exp\":1700000600,\"nbf\":null}")), JWT_BAD_CLAIM);
	/* Without exp when the options allow it; the user name from another claim. */
	o.now = NOW;
	o.require_exp = false;
	o.user_claim = "username";
	assert_int_equal(verify_opt(keys[K_ED], token(K_ED, "{\"sub\":\"x\",\"username\":\"bob\"}"), &o, &c), JWT_OK);
	assert_string_equal(c.user, "bob");
	assert_int_equal(c.exp, 0);
	jwt_claims_free(&c);
	assert_int_equal(verify_opt(keys[K_ED], token(K_ED, "{\"sub\":\"x\"}"), &o, &c), JWT_BAD_CLAIM);
	assert_null(c.user);
}

static void claims_with_filter_lists(void **state)
{
	struct jwt_options o = JWT_OPTIONS_DEFAULT;
	struct jwt_claims c;
	struct acl_client *view;

	o.now = NOW;
	o.read_claim = "read";
	o.write_claim = "write";
	assert_int_equal(verify_opt(keys[K_RSA],
				    token(K_RSA, "{\"sub\":\"dev7\",\"exp\":1700000600,"
						   "\"read\":[\"cmd/dev7/#\",\"$SYS/broker/load\"],"
						   "\"write\":[\"data/dev7\"]}"), &o, &c), JWT_OK);
	assert_true(c.has_read);
	assert_true(c.has_write);
	assert_int_equal(c.nread, 2);
	assert_string_equal(c.read[0], "cmd/dev7/#");
	assert_string_equal(c.read[1], "$SYS/broker/load");
	assert_int_equal(c.nwrite, 1);
	assert_string_equal(c.write[0], "data/dev7");
	view = acl_client_from_lists((const char *const *)c.read, c.nread,
				     (const char *const *)c.write, c.nwrite);
	assert_true(acl_client_check(view, "cmd/dev7/reboot", 15, ACL_READ));
	assert_false(acl_client_check(view, "cmd/dev8/reboot", 15, ACL_READ));
	assert_true(acl_client_check(view, "data/dev7", 9, ACL_WRITE));
	assert_false(acl_client_check(view, "data/dev7", 9, ACL_READ));
	acl_client_free(view);
	jwt_claims_free(&c);

	/* An empty list is a list; an absent one is none. */
	assert_int_equal(verify_opt(keys[K_RSA], token(K_RSA, "{\"sub\":\"a\",\"exp\":1700000600,\"read\":[]}"),
				    &o, &c), JWT_OK);
	assert_true(c.has_read);
	assert_int_equal(c.nread, 0);
	assert_false(c.has_write);
	jwt_claims_free(&c);

	assert_int_equal(verify_opt(keys[K_RSA], token(K_RSA, "{\"sub\":\"a\",\"exp\":1700000600,\"read\":\"a/#\"}"),
				    &o, &c), JWT_BAD_CLAIM);
	assert_int_equal(verify_opt(keys[K_RSA], token(K_RSA, "{\"sub\":\"a\",\"exp\":1700000600,\"read\":[\"a/#/b\"]}"),
				    &o, &c), JWT_BAD_CLAIM);
	assert_int_equal(verify_opt(keys[K_RSA], token(K_RSA, "{\"sub\":\"a\",\"exp\":1700000600,\"write\":[\"ok\",7]}"),
				    &o, &c), JWT_BAD_CLAIM);
	assert_int_equal(verify_opt(keys[K_RSA], token(K_RSA, "{\"sub\":\"a\",\"exp\":1700000600,\"write\":[\"\"]}"),
				    &o, &c), JWT_BAD_CLAIM);
	assert_null(c.write);
	/* Claim names not configured: the lists are not read at all. */
	o.read_claim = o.write_claim = NULL;
	assert_int_equal(verify_opt(keys[K_RSA], token(K_RSA, "{\"sub\":\"a\",\"exp\":1700000600,\"read\":7}"),
				    &o, &c), JWT_OK);
	assert_false(c.has_read);
	jwt_claims_free(&c);
}

static void key_file_errors(void **state)
{
	char text[16384];
	EVP_PKEY *small = EVP_RSA_gen(1024), *p384 = EVP_EC_gen("P-384");
	char *small_pem = public_pem(small), *p384_pem = public_pem(p384);
	BIO *b = BIO_new(BIO_s_mem());
	char *priv;
	long n;

	keys_refused("", "no PUBLIC KEY block");
	keys_refused("just text\n", "no PUBLIC KEY block");
	snprintf(text, sizeof(text), "%s%s", pem[K_ED], small_pem);
	keys_refused(text, "block 2: an RSA key shorter than 2048 bits");
	keys_refused(p384_pem, "block 1: an EC key not on P-256");
	/* A private key in the file: refused, not skipped. */
	assert_int_equal(PEM_write_bio_PrivateKey(b, key[K_ED], NULL, NULL, 0, NULL, NULL), 1);
	n = BIO_get_mem_data(b, &priv);
	snprintf(text, sizeof(text), "%s%.*s", pem[K_EC], (int)n, priv);
	keys_refused(text, "block 2: not a PUBLIC KEY block");
	/* A damaged block. */
	snprintf(text, sizeof(text), "%s", pem[K_EC]);
	text[40] = text[40] == 'A' ? 'B' : 'A';
	keys_refused(text, "block 1: not a public key");
	snprintf(text, sizeof(text), "%s", pem[K_EC]);
	text[30] = '!';
	keys_refused(text, "block 1: not PEM");
	/* At most JWT_MAX_KEYS keys. */
	text[0] = '\0';
	for (int i = 0; i <= JWT_MAX_KEYS; i++)
		strcat(text, pem[K_ED]);
	keys_refused(text, "block 17: more keys");
	BIO_free(b);
	EVP_PKEY_free(small);
	EVP_PKEY_free(p384);
	free(small_pem);
	free(p384_pem);
}

static void key_file_load(void **state)
{
	char path[] = "/tmp/iotd-test-jwt-XXXXXX", err[512];
	struct jwt_keys *k = NULL;

	temp_file(path, pem[K_EC]);
	assert_int_equal(jwt_keys_load(path, &k, err, sizeof(err)), 0);
	assert_int_equal(verify(k, token(K_EC, VALID)), JWT_OK);
	jwt_keys_free(k);
	k = NULL;
	assert_int_equal(truncate(path, 0), 0);
	assert_int_equal(jwt_keys_load(path, &k, err, sizeof(err)), -1);
	assert_true(strncmp(err, path, strlen(path)) == 0);
	unlink(path);
	assert_int_equal(jwt_keys_load(path, &k, err, sizeof(err)), -1);
	assert_contains(err, "No such file");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(valid_tokens_of_each_kind),
		cmocka_unit_test(signed_by_another_key),
		cmocka_unit_test(tampered_token),
		cmocka_unit_test(expiry_and_not_before),
		cmocka_unit_test(alg_must_be_the_keys),
		cmocka_unit_test(alg_none_refused),
		cmocka_unit_test(bad_base64_and_shape),
		cmocka_unit_test(too_long),
		cmocka_unit_test(bad_json),
		cmocka_unit_test(missing_or_wrong_claims),
		cmocka_unit_test(claims_with_filter_lists),
		cmocka_unit_test(key_file_errors),
		cmocka_unit_test(key_file_load),
	};

	return cmocka_run_group_tests(tests, make_keys, free_keys);
}
