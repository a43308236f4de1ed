/*
 * scram.c - SCRAM-SHA-256's server side (scram.h): the messages parsed and
 * made, the keys and the proof checked.
 *
 * Owns the message grammar of RFC 5802 section 7 as far as a server
 * without channel binding needs it. The cryptography is OpenSSL's
 * (PKCS5_PBKDF2_HMAC, HMAC, SHA256, CRYPTO_memcmp); every copy of a key
 * is wiped. The parsers are driven by tests/fuzz/fuzz_scram.c.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "b64.h"
#include "textfile.h"
#include "scram.h"

static bool hmac256(const uint8_t *key, size_t klen, const void *msg, size_t mlen,
		    uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int n = SCRAM_KEY_LEN;

	return HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &n) != NULL &&
	       n == SCRAM_KEY_LEN;
}

bool scram_verifier_make(const void *password, size_t pwlen, const uint8_t *salt,
			 size_t salt_len, uint32_t iterations, struct scram_verifier *v)
{
	uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
	bool ok;

	if (salt_len > SCRAM_SALT_MAX || salt_len == 0 || iterations == 0 ||
	    iterations > INT32_MAX || pwlen > INT32_MAX)
		return false;
	v->iterations = iterations;
	v->salt_len = (uint8_t)salt_len;
	memcpy(v->salt, salt, salt_len);
	ok = PKCS5_PBKDF2_HMAC(password, (int)pwlen, salt, (int)salt_len, (int)iterations,
			       EVP_sha256(), sizeof(salted), salted) == 1 &&
	     hmac256(salted, sizeof(salted), "Client Key", 10, client_key) &&
	     SHA256(client_key, sizeof(client_key), v->stored_key) != NULL &&
	     hmac256(salted, sizeof(salted), "Server Key", 10, v->server_key);
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	return ok;
}

/* --- parsing ---------------------------------------------------------------- */

/* "x=value": the attribute x, a value of at least one byte. */
static bool attr(const char *f, size_t flen, char name, const char **v, size_t *vlen)
{
	if (flen < 3 || f[0] != name || f[1] != '=')
		return false;
	*v = f + 2;
	*vlen = flen - 2;
	return true;
}

/* printable: %x21-2B / %x2D-7E (every visible character but ','). */
static bool nonce_ok(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
			return false;
	return len > 0;
}

/* saslname into out: "=2C" is ',', "=3D" is '='; any other '=', and NUL, refused. */
static bool saslname(const char *s, size_t len, char *out, size_t *out_len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		if (s[i] == '\0')
			return false;
		if (s[i] != '=') {
			out[n++] = s[i];
			continue;
		}
		if (len - i < 3 || (memcmp(s + i, "=2C", 3) != 0 && memcmp(s + i, "=3D", 3) != 0))
			return false;
		out[n++] = s[i + 1] == '2' ? ',' : '=';
		i += 2;
	}
	*out_len = n;
	return n > 0;
}

/* Extensions in s[off..end): "x=value" each, x a letter; taken as they are. */
static bool extensions_ok(const char *s, size_t off, size_t end)
{
	const char *f;
	size_t flen;

	while (off < end) {
		if (!text_field(s, end, ',', &off, &f, &flen) || flen < 3 || f[1] != '=' ||
		    !((f[0] >= 'a' && f[0] <= 'z') || (f[0] >= 'A' && f[0] <= 'Z')))
			return false;
	}
	return true;
}

const char *scram_client_first(struct scram_exchange *x, const char *msg, size_t len)
{
	const char *f, *v;
	size_t off = 0, flen, vlen;

	memset(x, 0, sizeof(*x));
	if (len > SCRAM_MSG_MAX)
		return "client-first longer than its bound";
	if (!text_field(msg, len, ',', &off, &f, &flen) || flen != 1)
		return "client-first: no GS2 header";
	if (f[0] == 'p')
		return "client-first: channel binding asked (p=), which iotd does not offer";
	if (f[0] != 'n' && f[0] != 'y')
		return "client-first: GS2 header not n or y";
	if (!text_field(msg, len, ',', &off, &f, &flen) || off > len)
		return "client-first: no GS2 header";
	if (flen != 0)
		return "client-first: an authorization identity (a=), which iotd does not take";
	x->gs2_len = off;
	memcpy(x->gs2, msg, off);
	memcpy(x->client_first_bare, msg + off, len - off);
	x->client_first_bare_len = len - off;
	if (!text_field(msg, len, ',', &off, &f, &flen) || !attr(f, flen, 'n', &v, &vlen))
		return "client-first: no user name (n=)";
	if (!saslname(v, vlen, x->user, &x->user_len))
		return "client-first: a user name badly escaped";
	if (!text_field(msg, len, ',', &off, &f, &flen) || !attr(f, flen, 'r', &v, &vlen) ||
	    !nonce_ok(v, vlen))
		return "client-first: no nonce (r=) of printable characters";
	if (off < len && !extensions_ok(msg, off, len))
		return "client-first: a malformed extension";
	/* The nonce is kept where server-first will repeat it. */
	if (vlen + 2 > sizeof(x->server_first))
		return "client-first: nonce too long";
	memcpy(x->server_first, "r=", 2);
	memcpy(x->server_first + 2, v, vlen);
	x->nonce_len = vlen;
	return NULL;
}

const char *scram_server_first(struct scram_exchange *x, const char *server_nonce,
			       size_t nonce_len, const struct scram_verifier *v)
{
	char salt[b64_encoded_size(SCRAM_SALT_MAX) + 1];
	size_t at = 2 + x->nonce_len;
	int n;

	if (b64_encode(B64_STD, v->salt, v->salt_len, salt, sizeof(salt)) < 0 ||
	    nonce_len > sizeof(x->server_first) - at)
		return "server-first too long";
	memcpy(x->server_first + at, server_nonce, nonce_len);
	at += nonce_len;
	n = snprintf(x->server_first + at, sizeof(x->server_first) - at, ",s=%s,i=%u", salt,
		     v->iterations);
	if (n < 0 || (size_t)n >= sizeof(x->server_first) - at)
		return "server-first too long";
	x->nonce_len += nonce_len;
	x->server_first_len = at + (size_t)n;
	memcpy(x->stored_key, v->stored_key, SCRAM_KEY_LEN);
	memcpy(x->server_key, v->server_key, SCRAM_KEY_LEN);
	return NULL;
}

bool scram_server_nonce(char out[32])
{
	uint8_t raw[SCRAM_SERVER_NONCE_BYTES];

	return RAND_bytes(raw, sizeof(raw)) == 1 && b64_encode(B64_STD, raw, sizeof(raw), out, 32) > 0;
}

/*
 * HMAC(key, AuthMessage): client-first-bare "," server-first ","
 * client-final-without-proof, fed in its parts (EVP_MAC) rather than copied.
 */
static bool auth_message_hmac(const struct scram_exchange *x, const uint8_t *key,
			      const char *final, size_t final_len, uint8_t out[SCRAM_KEY_LEN])
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *mc = mac ? EVP_MAC_CTX_new(mac) : NULL;
	OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
				OSSL_PARAM_construct_end() };
	size_t outl = 0;
	bool ok;

	ok = mc != NULL && EVP_MAC_init(mc, key, SCRAM_KEY_LEN, params) == 1 &&
	     EVP_MAC_update(mc, (const uint8_t *)x->client_first_bare, x->client_first_bare_len) == 1 &&
	     EVP_MAC_update(mc, (const uint8_t *)",", 1) == 1 &&
	     EVP_MAC_update(mc, (const uint8_t *)x->server_first, x->server_first_len) == 1 &&
	     EVP_MAC_update(mc, (const uint8_t *)",", 1) == 1 &&
	     EVP_MAC_update(mc, (const uint8_t *)final, final_len) == 1 &&
	     EVP_MAC_final(mc, out, &outl, SCRAM_KEY_LEN) == 1 && outl == SCRAM_KEY_LEN;
	EVP_MAC_CTX_free(mc);
	EVP_MAC_free(mac);
	return ok;
}

enum scram_result scram_client_final(const struct scram_exchange *x, const char *msg, size_t len,
				     char *out, size_t cap, size_t *out_len, const char **why)
{
	uint8_t cb[16], proof[SCRAM_KEY_LEN + 4], sig[SCRAM_KEY_LEN], key[SCRAM_KEY_LEN];
	uint8_t stored[SCRAM_KEY_LEN];
	char v64[b64_encoded_size(SCRAM_KEY_LEN) + 1];
	const char *f, *v, *p;
	size_t off = 0, flen, vlen, wp_len;
	ssize_t n;
	bool match;

	*why = "client-final malformed";
	if (len > SCRAM_MSG_MAX)
		return *why = "client-final longer than its bound", SCRAM_MALFORMED;
	if (!text_field(msg, len, ',', &off, &f, &flen) || !attr(f, flen, 'c', &v, &vlen) ||
	    (n = b64_decode(B64_STD, v, vlen, cb, sizeof(cb))) < 0 ||
	    (size_t)n != x->gs2_len || memcmp(cb, x->gs2, x->gs2_len) != 0)
		return *why = "client-final: channel binding (c=) not the GS2 header of client-first",
		       SCRAM_MALFORMED;
	if (!text_field(msg, len, ',', &off, &f, &flen) || !attr(f, flen, 'r', &v, &vlen) ||
	    vlen != x->nonce_len || memcmp(v, x->server_first + 2, vlen) != 0)
		return *why = "client-final: nonce (r=) not the exchange's", SCRAM_MALFORMED;
	/* The proof is the last attribute; what lies between is extensions. */
	p = NULL;
	for (size_t i = len; i >= off; i--)
		if (msg[i - 1] == ',') {
			p = msg + i - 1;
			break;
		}
	if (p == NULL || (size_t)(msg + len - p) < 4 || memcmp(p, ",p=", 3) != 0)
		return *why = "client-final: no proof (p=) at its end", SCRAM_MALFORMED;
	wp_len = (size_t)(p - msg);
	if (wp_len > off - 1 && !extensions_ok(msg, off, wp_len))
		return SCRAM_MALFORMED;
	n = b64_decode(B64_STD, p + 3, (size_t)(msg + len - p) - 3, proof, sizeof(proof));
	if (n != SCRAM_KEY_LEN)
		return *why = "client-final: proof not 32 bytes of base64", SCRAM_MALFORMED;
	/* ClientKey = proof XOR HMAC(StoredKey, AuthMessage); H(ClientKey) must be StoredKey. */
	if (!auth_message_hmac(x, x->stored_key, msg, wp_len, sig))
		return *why = "cannot compute (OpenSSL)", SCRAM_MALFORMED;
	for (size_t i = 0; i < SCRAM_KEY_LEN; i++)
		key[i] = proof[i] ^ sig[i];
	match = SHA256(key, sizeof(key), stored) != NULL &&
		CRYPTO_memcmp(stored, x->stored_key, SCRAM_KEY_LEN) == 0;
	OPENSSL_cleanse(key, sizeof(key));
	if (!match)
		return *why = "bad user name or password", SCRAM_BAD_PROOF;
	if (!auth_message_hmac(x, x->server_key, msg, wp_len, sig) ||
	    b64_encode(B64_STD, sig, sizeof(sig), v64, sizeof(v64)) < 0 ||
	    (*out_len = (size_t)snprintf(out, cap, "v=%s", v64)) >= cap)
		return *why = "cannot compute (OpenSSL)", SCRAM_MALFORMED;
	return SCRAM_OK;
}
