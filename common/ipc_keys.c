/*
 * ipc_keys.c - the key role's channel messages (ipc.h): a worker's
 * signing request and its answer, the certificate chain and the
 * session-ticket keys, each encoded and decoded with every length and
 * value checked. A request comes from a worker, which parses client
 * bytes: the key role decodes it as hostile input.
 */
#include <stdlib.h>
#include <string.h>

#include "ipc.h"

size_t ipc_keys_md_len(uint8_t md)
{
	switch (md) {
	case IPC_KEYS_MD_SHA256: return 32;
	case IPC_KEYS_MD_SHA384: return 48;
	case IPC_KEYS_MD_SHA512: return 64;
	default: return 0;
	}
}

/*
 * A digest algorithm gets a digest of its md's length; a PSS encoding
 * the length of an RSA key iotd takes and no md; Ed25519 some data and no
 * md.
 */
static bool sign_fields_ok(const struct ipc_keys_fields *f)
{
	if (f->alg == 0 || f->alg >= IPC_KEYS_ALG_MAX)
		return false;
	if (f->alg == IPC_KEYS_ED25519)
		return f->md == IPC_KEYS_MD_NONE && f->len > 0 && f->len <= IPC_KEYS_DATA_MAX;
	if (f->alg == IPC_KEYS_RSA_PSS)
		return f->md == IPC_KEYS_MD_NONE && f->len >= IPC_KEYS_PSS_MIN &&
		       f->len <= IPC_KEYS_SIG_MAX;
	return ipc_keys_md_len(f->md) != 0 && f->len == ipc_keys_md_len(f->md);
}

size_t ipc_keys_sign_encode(const struct ipc_keys_fields *f, uint8_t *buf)
{
	struct ipc_keys_sign h = { .id = f->id, .key_id = f->key_id, .alg = f->alg, .md = f->md,
				   .len = (uint16_t)f->len };

	if (!sign_fields_ok(f))
		return 0;
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), f->data, f->len);
	return sizeof(h) + f->len;
}

bool ipc_keys_sign_decode(const void *data, size_t len, struct ipc_keys_fields *f)
{
	struct ipc_keys_sign h;

	if (len < sizeof(h))
		return false;
	memcpy(&h, data, sizeof(h));
	*f = (struct ipc_keys_fields){ .id = h.id, .key_id = h.key_id, .alg = h.alg, .md = h.md,
				       .data = (const uint8_t *)data + sizeof(h), .len = h.len };
	return len - sizeof(h) == h.len && sign_fields_ok(f);
}

size_t ipc_keys_signed_encode(const struct ipc_keys_fields *f, uint8_t *buf)
{
	struct ipc_keys_signed h = { .id = f->id, .status = f->status, .len = (uint32_t)f->len };

	if (f->len > IPC_KEYS_SIG_MAX || (f->status != IPC_KEYS_OK && f->len != 0))
		return 0;
	memcpy(buf, &h, sizeof(h));
	if (f->len > 0)
		memcpy(buf + sizeof(h), f->data, f->len);
	return sizeof(h) + f->len;
}

bool ipc_keys_signed_decode(const void *data, size_t len, struct ipc_keys_fields *f)
{
	struct ipc_keys_signed h;

	if (len < sizeof(h))
		return false;
	memcpy(&h, data, sizeof(h));
	*f = (struct ipc_keys_fields){ .id = h.id, .status = h.status,
				       .data = (const uint8_t *)data + sizeof(h), .len = h.len };
	return len - sizeof(h) == h.len && h.len <= IPC_KEYS_SIG_MAX &&
	       (h.status == IPC_KEYS_OK) == (h.len > 0);
}

void *ipc_keys_chain_encode(const struct ipc_keys_pem *p, size_t *len)
{
	struct ipc_keys_chain h = { .key_id = p->key_id, .cert = p->cert, .chain_len = (uint32_t)p->chain_len,
				    .trust_len = (uint32_t)p->trust_len };
	uint8_t *buf;

	if (p->chain_len > IPC_KEYS_CHAIN_MAX || p->trust_len > IPC_KEYS_CHAIN_MAX - p->chain_len)
		return NULL;
	*len = sizeof(h) + p->chain_len + p->trust_len;
	if ((buf = malloc(*len)) == NULL)
		return NULL;
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), p->chain, p->chain_len);
	if (p->trust_len > 0)
		memcpy(buf + sizeof(h) + p->chain_len, p->trust, p->trust_len);
	return buf;
}

bool ipc_keys_chain_decode(const void *data, size_t len, struct ipc_keys_pem *p)
{
	struct ipc_keys_chain h;

	if (len < sizeof(h))
		return false;
	memcpy(&h, data, sizeof(h));
	*p = (struct ipc_keys_pem){ .key_id = h.key_id, .cert = h.cert,
				    .chain = (const char *)data + sizeof(h), .chain_len = h.chain_len,
				    .trust = (const char *)data + sizeof(h) + h.chain_len,
				    .trust_len = h.trust_len };
	return h.chain_len <= len - sizeof(h) && h.trust_len == len - sizeof(h) - h.chain_len &&
	       h.chain_len > 0 && h.key_id != 0 && h.cert < TLS_CERTS_MAX;
}

bool ipc_keys_tickets_decode(const void *data, size_t len, struct ipc_keys_tickets *t)
{
	if (len != sizeof(*t))
		return false;
	memcpy(t, data, sizeof(*t));
	return (t->n == 1 || t->n == 2) && t->reserved == 0;
}
