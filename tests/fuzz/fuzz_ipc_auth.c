/*
 * fuzz_ipc_auth.c - libFuzzer harness for the auth channels' messages
 * (ipc_auth.c): what a compromised worker can send the auth role, and
 * the verdicts a worker reads.
 *
 * Input: a payload, decoded as a request (a password's or a SCRAM
 * step's) and as a verdict. A decoded
 * request's fields must lie inside the payload, within their bounds, and
 * add up to it exactly; encoded again, it must give the same bytes. The
 * same for a verdict.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const void *field, size_t len, const uint8_t *data, size_t size)
{
	const uint8_t *p = field;

	if (len > 0 && (p < data || p + len > data + size))
		__builtin_trap();
}

/* Encoded again, a message's fields give its bytes back (its fixed part aside: padding). */
static void same_again(void *(*encode)(const struct ipc_auth_fields *, size_t *),
		       const struct ipc_auth_fields *f, size_t fixed, const uint8_t *data,
		       size_t size)
{
	size_t len;
	uint8_t *again = encode(f, &len);

	if (again == NULL || len != size || memcmp(again + fixed, data + fixed, size - fixed) != 0)
		__builtin_trap();
	free(again);
}

/* A decoded request: its fields inside the payload, within their bounds, adding up to it. */
static void check_request(const struct ipc_auth_fields *f, const uint8_t *data, size_t size)
{
	inside(f->remote, f->remote_len, data, size);
	inside(f->client_id, f->client_id_len, data, size);
	inside(f->user, f->user_len, data, size);
	inside(f->password, f->password_len, data, size);
	inside(f->data, f->data_len, data, size);
	if (f->remote_len > IPC_AUTH_REMOTE_MAX || f->user_len > IPC_AUTH_FIELD_MAX ||
	    f->data_len > IPC_AUTH_DATA_MAX ||
	    sizeof(struct ipc_auth_request) + f->remote_len + f->client_id_len + f->user_len +
	    f->password_len + f->data_len != size || (!f->has_user && f->user_len) ||
	    /* A SCRAM step carries its message alone; a password's request none. */
	    (f->scram_step && (f->has_user || f->has_password || f->user_from_cert)) ||
	    (!f->scram_step && (f->data_len || f->reauth)) ||
	    (f->reauth && f->scram_step != IPC_AUTH_SCRAM_FIRST))
		__builtin_trap();
	same_again(ipc_auth_request_encode, f, sizeof(struct ipc_auth_request), data, size);
}

static void check_verdict(const struct ipc_auth_fields *f, const uint8_t *data, size_t size)
{
	inside(f->user, f->user_len, data, size);
	inside(f->rules, f->rules_len, data, size);
	inside(f->data, f->data_len, data, size);
	same_again(ipc_auth_verdict_encode, f, sizeof(struct ipc_auth_verdict), data, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A payload as the dispatcher hands it: aligned, in memory of its own. */
	uint8_t *copy = malloc(size ? size : 1);
	struct ipc_auth_fields f;

	if (copy == NULL)
		return 0;
	memcpy(copy, data, size);
	if (ipc_auth_request_decode(copy, size, &f))
		check_request(&f, copy, size);
	if (ipc_auth_verdict_decode(copy, size, &f))
		check_verdict(&f, copy, size);
	free(copy);
	return 0;
}
