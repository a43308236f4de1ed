/*
 * fuzz_scram.c - libFuzzer harness for SCRAM-SHA-256's messages (scram.h).
 *
 * Input: a client-first message, a NUL, then a client-final message. The
 * first is parsed; when it is taken, server-first is made with a fixed
 * verifier (password "pencil", one iteration) and the second checked
 * against the exchange. What is taken must hold together: a user name,
 * the bare message inside the input, a server-first that repeats the
 * client's nonce; a final message taken must have been made from the
 * password (the seeds hold one such exchange) and gives "v=...".
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "scram.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct scram_exchange x;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct scram_verifier v;
	static int ready;
	const char *text = (const char *)data, *nul, *why = NULL;
	size_t first_len, out_len = 0;
	char out[128];
	enum scram_result r;

	if (!ready) {
		if (!scram_verifier_make("pencil", 6, (const uint8_t *)"salt-of-16-bytes", 16, 1, &v))
			__builtin_trap();
		ready = 1;
	}
	nul = memchr(text, '\0', size);
	first_len = nul ? (size_t)(nul - text) : size;
	if (scram_client_first(&x, text, first_len) != NULL)
		return 0;
	if (x.user_len == 0 || x.user_len > first_len || x.client_first_bare_len >= first_len ||
	    x.nonce_len == 0 || (x.gs2_len != 3))
		__builtin_trap();
	if (scram_server_first(&x, "SERVERNONCE", 11, &v) != NULL)
		return 0;
	if (memcmp(x.server_first, "r=", 2) != 0 || x.server_first_len > sizeof(x.server_first) ||
	    memcmp(x.server_first + 2 + x.nonce_len - 11, "SERVERNONCE", 11) != 0)
		__builtin_trap();
	if (nul == NULL)
		return 0;
	r = scram_client_final(&x, nul + 1, size - first_len - 1, out, sizeof(out), &out_len, &why);
	if (r == SCRAM_OK && (out_len >= sizeof(out) || memcmp(out, "v=", 2) != 0))
		__builtin_trap();
	if (r != SCRAM_OK && why == NULL)
		__builtin_trap();
	return 0;
}
