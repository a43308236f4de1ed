/*
 * jwt.h - verifying a JSON Web Token (RFC 7519, compact form) against the
 * public keys of a PEM file, and reading the claims iotd uses.
 *
 * The key file holds one or more "PUBLIC KEY" blocks (SubjectPublicKeyInfo,
 * as `openssl pkey -pubout` writes them); any other block refuses the
 * file. Each key fixes its algorithm: RSA of at least 2048 bits RS256,
 * EC P-256 ES256, Ed25519 EdDSA; other keys refuse the file. A token's
 * "alg" must be the algorithm of some key, and the signature is checked
 * with the keys of that algorithm only: "none", HMAC and any algorithm no
 * key has are refused, so a token cannot choose how it is checked. A
 * header with "crit" is refused (iotd understands no extension).
 *
 * The claims are read only once the signature holds: "exp" (required
 * unless the options say otherwise) and "nbf" against the time the caller
 * passes, the user name from a claim named by the options ("sub" by
 * default), and optional lists of topic filters the client may read and
 * write (arrays of strings, claim names chosen by the options; see
 * acl_client_from_lists).
 */
#ifndef IOTD_JWT_H
#define IOTD_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_MAX_KEYS 16        /* in one key file */
#define JWT_MAX_KEY_FILE (1u << 20)
#define JWT_MAX_FILTERS 256    /* in one list claim */

struct jwt_keys;

/* Parse PEM text. Returns 0 with *out set, or -1 with a message in err ("block 2: ..."). */
int jwt_keys_parse(const char *pem, size_t len, struct jwt_keys **out, char *err, size_t errlen);

/* Read and parse the file at path; messages start with the path. */
int jwt_keys_load(const char *path, struct jwt_keys **out, char *err, size_t errlen);

void jwt_keys_free(struct jwt_keys *keys);

size_t jwt_keys_count(const struct jwt_keys *keys);

struct jwt_options {
	int64_t now;               /* seconds since the epoch */
	uint32_t leeway;           /* seconds of clock difference allowed on exp and nbf */
	bool require_exp;          /* refuse a token that never expires */
	const char *user_claim;    /* the claim that holds the user name */
	const char *read_claim;    /* the claim listing filters to read, or NULL */
	const char *write_claim;   /* the claim listing filters to write, or NULL */
	size_t max_token;          /* bytes */
};

/* now is the caller's to set. */
#define JWT_OPTIONS_DEFAULT { .leeway = 0, .require_exp = true, .user_claim = "sub", \
	.read_claim = NULL, .write_claim = NULL, .max_token = 16384 }

struct jwt_claims {
	char *user;
	int64_t exp;               /* 0 when the token has none */
	bool has_read, has_write;  /* the claim was there (its list may be empty) */
	char **read;               /* valid filters (acl_filter_valid) */
	size_t nread;
	char **write;
	size_t nwrite;
};

enum jwt_result {
	JWT_OK,
	JWT_MALFORMED,     /* not three base64url parts, not JSON objects, too long */
	JWT_BAD_ALG,       /* "none", or an algorithm no key has, or "crit" */
	JWT_BAD_SIGNATURE, /* no key of its algorithm signed it */
	JWT_EXPIRED,       /* now is at or past exp (+ leeway) */
	JWT_NOT_YET,       /* now is before nbf (- leeway) */
	JWT_BAD_CLAIM,     /* a claim missing or of the wrong form */
	JWT_ERROR,         /* out of memory */
};

/*
 * Verify token (len bytes) and, when JWT_OK, fill claims (free them with
 * jwt_claims_free). Any other result leaves claims empty and says why in err.
 */
enum jwt_result jwt_verify(const struct jwt_keys *keys, const char *token, size_t len,
			   const struct jwt_options *opt, struct jwt_claims *claims,
			   char *err, size_t errlen);

void jwt_claims_free(struct jwt_claims *claims);

#endif
