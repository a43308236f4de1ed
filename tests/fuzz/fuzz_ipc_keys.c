/*
 * fuzz_ipc_keys.c - libFuzzer harness for the key role's channel
 * messages (ipc_keys.c): what a compromised worker can send the key role
 * (a signing request), and what a worker reads (an answer, a chain, the
 * ticket keys).
 *
 * Input: a payload, decoded as each message. A decoded request's data
 * must lie inside the payload, its length go with its algorithm and
 * digest, and encoding it again give the same bytes; the same for an
 * answer. A chain's parts must lie inside the payload and add up to it.
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

static void check_request(const struct ipc_keys_fields *f, const uint8_t *data, size_t size)
{
	static uint8_t again[IPC_KEYS_SIGN_LEN_MAX];
	size_t len;

	inside(f->data, f->len, data, size);
	if (f->alg == 0 || f->alg >= IPC_KEYS_ALG_MAX || f->len > IPC_KEYS_DATA_MAX ||
	    ((f->alg == IPC_KEYS_RSA_PKCS1 || f->alg == IPC_KEYS_ECDSA) &&
	     f->len != ipc_keys_md_len(f->md)) ||
	    ((f->alg == IPC_KEYS_RSA_PSS || f->alg == IPC_KEYS_ED25519) && f->md != IPC_KEYS_MD_NONE))
		__builtin_trap();
	len = ipc_keys_sign_encode(f, again);
	if (len != size || memcmp(again + sizeof(struct ipc_keys_sign), data +
				  sizeof(struct ipc_keys_sign), size - sizeof(struct ipc_keys_sign)))
		__builtin_trap();
}

static void check_answer(const struct ipc_keys_fields *f, const uint8_t *data, size_t size)
{
	static uint8_t again[IPC_KEYS_SIGNED_LEN_MAX];
	size_t len;

	inside(f->data, f->len, data, size);
	if (f->len > IPC_KEYS_SIG_MAX || (f->status == IPC_KEYS_OK) != (f->len > 0))
		__builtin_trap();
	len = ipc_keys_signed_encode(f, again);
	if (len != size || memcmp(again, data, size) != 0)
		__builtin_trap();
}

static void check_chain(const struct ipc_keys_pem *p, const uint8_t *data, size_t size)
{
	inside(p->chain, p->chain_len, data, size);
	inside(p->trust, p->trust_len, data, size);
	if (sizeof(struct ipc_keys_chain) + p->chain_len + p->trust_len != size ||
	    p->chain_len == 0 || p->cert >= TLS_CERTS_MAX)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ipc_keys_fields f;
	struct ipc_keys_pem p;
	struct ipc_keys_tickets t;

	if (ipc_keys_sign_decode(data, size, &f))
		check_request(&f, data, size);
	if (ipc_keys_signed_decode(data, size, &f))
		check_answer(&f, data, size);
	if (ipc_keys_chain_decode(data, size, &p))
		check_chain(&p, data, size);
	if (ipc_keys_tickets_decode(data, size, &t) && (t.n < 1 || t.n > 2))
		__builtin_trap();
	return 0;
}
