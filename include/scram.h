/*
 * scram.h - SCRAM-SHA-256 (RFC 5802, RFC 7677), the server's side, for
 * MQTT 5's enhanced authentication (method "SCRAM-SHA-256").
 *
 * No channel binding: the client's GS2 header is "n,," or "y,," (a
 * client able to bind that believes the server is not), with no
 * authorization identity; "p=" is refused. Messages are at most
 * SCRAM_MSG_MAX bytes each.
 *
 * The exchange:
 *   client-first  n,,n=<user>,r=<client nonce>
 *   server-first  r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>
 *   client-final  c=biws,r=<both nonces>,p=<base64 ClientProof>
 *   server-final  v=<base64 ServerSignature>
 * A verifier (salt, iterations, StoredKey, ServerKey) is what the server
 * keeps of a password: enough to check a proof, not to make one.
 */
#ifndef IOTD_SCRAM_H
#define IOTD_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_METHOD "SCRAM-SHA-256"
#define SCRAM_MSG_MAX 1024           /* one message of the exchange, bytes */
#define SCRAM_KEY_LEN 32             /* SHA-256 */
#define SCRAM_SALT_MAX 64
#define SCRAM_ITERATIONS_MIN 4096    /* RFC 7677 */
#define SCRAM_SERVER_NONCE_BYTES 18  /* random bytes, sent as 24 base64 characters */

struct scram_verifier {
	uint32_t iterations;
	uint8_t salt_len;
	uint8_t salt[SCRAM_SALT_MAX];
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];
};

/* What the server keeps between its first message and the client's final one. */
struct scram_exchange {
	char user[SCRAM_MSG_MAX];            /* the user name, "=2C" and "=3D" decoded */
	size_t user_len;
	char gs2[8];                         /* "n,," or "y,," */
	size_t gs2_len;
	char client_first_bare[SCRAM_MSG_MAX];
	size_t client_first_bare_len;
	char server_first[2 * SCRAM_MSG_MAX];
	size_t server_first_len;
	size_t nonce_len;                    /* both nonces, at the start of server_first + 2 */
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];
};

/*
 * The verifier of password under salt and iterations (PBKDF2-HMAC-SHA256,
 * then HMAC and SHA-256). false when OpenSSL fails.
 */
bool scram_verifier_make(const void *password, size_t pwlen, const uint8_t *salt,
			 size_t salt_len, uint32_t iterations, struct scram_verifier *v);

/*
 * Parse client-first (len bytes) into x: the GS2 header, the user name and
 * the bare message. Returns NULL, or why it is refused.
 */
const char *scram_client_first(struct scram_exchange *x, const char *msg, size_t len);

/*
 * server-first, made in x from the client's nonce, server_nonce (printable
 * ASCII but ',', none of it checked here) and v, whose keys x keeps.
 * Returns NULL, or why it cannot be made (too long).
 */
const char *scram_server_first(struct scram_exchange *x, const char *server_nonce,
			       size_t nonce_len, const struct scram_verifier *v);

/* A fresh server nonce: SCRAM_SERVER_NONCE_BYTES from RAND_bytes, base64 (NUL-terminated). */
bool scram_server_nonce(char out[32]);

enum scram_result {
	SCRAM_OK,          /* the proof holds: server-final written */
	SCRAM_BAD_PROOF,   /* well formed, another password (or no such user) */
	SCRAM_MALFORMED,   /* not a client-final of this exchange */
};

/*
 * Check client-final against x. SCRAM_OK writes server-final into out
 * (cap bytes, not NUL-terminated) and its length into *out_len; any other
 * result sets *why.
 */
enum scram_result scram_client_final(const struct scram_exchange *x, const char *msg, size_t len,
				     char *out, size_t cap, size_t *out_len, const char **why);

#endif
