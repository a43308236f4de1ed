/*
 * ipc_auth.c - the auth channels' two messages (ipc.h): IPC_AUTH_REQUEST
 * and IPC_AUTH_VERDICT, each a fixed struct followed by its byte fields
 * (a SCRAM step's message the last of them).
 *
 * Owns their layout, defined here once for both ends. A request comes
 * from a worker, which parses client bytes: decoding checks every length
 * against its bound and against the payload before anything points into
 * it, and never reads past the payload.
 */
#include <stdlib.h>
#include <string.h>

#include "iotd.h"
#include "ipc.h"

/* One byte field of a message. */
struct field {
	const void *p;
	size_t len;
};

/* A message: hdr, then the n fields one after the other; NULL when out of memory. */
static void *message_new(const void *hdr, size_t hdr_len, const struct field *fields, size_t n,
			 size_t *len)
{
	uint8_t *buf, *p;

	*len = hdr_len;
	for (size_t i = 0; i < n; i++)
		*len += fields[i].len;
	buf = malloc(*len);
	if (buf == NULL)
		return NULL;
	memcpy(buf, hdr, hdr_len);
	p = buf + hdr_len;
	for (size_t i = 0; i < n; i++) {
		if (fields[i].len > 0)
			memcpy(p, fields[i].p, fields[i].len);
		p += fields[i].len;
	}
	return buf;
}

/* Copy the fixed struct that opens a message; false when the message is shorter. */
static bool take_header(void *hdr, size_t hdr_len, const void *data, size_t len)
{
	if (len < hdr_len)
		return false;
	memcpy(hdr, data, hdr_len);
	return true;
}

void *ipc_auth_request_encode(const struct ipc_auth_fields *f, size_t *len)
{
	struct ipc_auth_request h = {
		.conn = f->conn, .ticket = f->ticket,
		.has_user = f->has_user, .has_password = f->has_password,
		.remote_len = (uint16_t)f->remote_len, .client_id_len = (uint32_t)f->client_id_len,
		.user_len = (uint32_t)f->user_len, .password_len = (uint32_t)f->password_len,
		.flags = (f->user_from_cert ? IPC_AUTH_USER_FROM_CERT : 0) | f->scram_step |
			 (f->reauth ? IPC_AUTH_SCRAM_REAUTH : 0),
		.data_len = (uint32_t)f->data_len,
	};
	const struct field fields[] = {
		{ f->remote, f->remote_len }, { f->client_id, f->client_id_len },
		{ f->user, f->user_len }, { f->password, f->password_len }, { f->data, f->data_len },
	};

	if (f->remote_len > IPC_AUTH_REMOTE_MAX || f->client_id_len > IPC_AUTH_FIELD_MAX ||
	    f->user_len > IPC_AUTH_FIELD_MAX || f->password_len > IPC_AUTH_FIELD_MAX ||
	    f->data_len > IPC_AUTH_DATA_MAX)
		return NULL;
	return message_new(&h, sizeof(h), fields, ARRAY_SIZE(fields), len);
}

bool ipc_auth_request_decode(const void *data, size_t len, struct ipc_auth_fields *f)
{
	const uint32_t scram = IPC_AUTH_SCRAM_FIRST | IPC_AUTH_SCRAM_FINAL;
	const uint32_t first_reauth = IPC_AUTH_SCRAM_FIRST | IPC_AUTH_SCRAM_REAUTH;
	struct ipc_auth_request h;
	const char *p = (const char *)data + sizeof(h);

	if (!take_header(&h, sizeof(h), data, len) ||
	    h.remote_len > IPC_AUTH_REMOTE_MAX || h.client_id_len > IPC_AUTH_FIELD_MAX ||
	    h.user_len > IPC_AUTH_FIELD_MAX || h.password_len > IPC_AUTH_FIELD_MAX ||
	    h.data_len > IPC_AUTH_DATA_MAX ||
	    h.has_user > 1 || h.has_password > 1 ||
	    (h.flags & ~(uint32_t)(IPC_AUTH_USER_FROM_CERT | scram | IPC_AUTH_SCRAM_REAUTH)) ||
	    ((h.flags & IPC_AUTH_SCRAM_REAUTH) && (h.flags & first_reauth) != first_reauth) ||
	    ((h.flags & IPC_AUTH_USER_FROM_CERT) && (!h.has_user || h.has_password)) ||
	    (!h.has_user && h.user_len) || (!h.has_password && h.password_len) ||
	    /* A SCRAM step is one step, with its message alone; a CONNECT's request has none. */
	    ((h.flags & scram) && ((h.flags & scram) == scram ||
				   (h.flags & ~(uint32_t)IPC_AUTH_SCRAM_REAUTH) != (h.flags & scram) ||
				   h.has_user || h.has_password)) ||
	    (!(h.flags & scram) && h.data_len) ||
	    len != sizeof(h) + (size_t)h.remote_len + h.client_id_len + h.user_len +
		   h.password_len + h.data_len)
		return false;
	*f = (struct ipc_auth_fields){
		.conn = h.conn, .ticket = h.ticket,
		.has_user = h.has_user, .has_password = h.has_password,
		.user_from_cert = (h.flags & IPC_AUTH_USER_FROM_CERT) != 0,
		.remote = p, .remote_len = h.remote_len,
		.client_id = p + h.remote_len, .client_id_len = h.client_id_len,
		.user = p + h.remote_len + h.client_id_len, .user_len = h.user_len,
		.password = (const uint8_t *)p + h.remote_len + h.client_id_len + h.user_len,
		.password_len = h.password_len,
		.scram_step = (uint8_t)(h.flags & scram),
		.reauth = (h.flags & IPC_AUTH_SCRAM_REAUTH) != 0,
		.data = (const uint8_t *)p + h.remote_len + h.client_id_len + h.user_len +
			h.password_len,
		.data_len = h.data_len,
	};
	return true;
}

void *ipc_auth_verdict_encode(const struct ipc_auth_fields *f, size_t *len)
{
	struct ipc_auth_verdict h = {
		.conn = f->conn, .ticket = f->ticket, .code = f->code,
		.flags = (f->rules_from_token ? IPC_AUTH_RULES_FROM_TOKEN : 0) |
			 (f->cont ? IPC_AUTH_CONTINUE : 0),
		.user_len = (uint32_t)f->user_len, .rules_len = (uint32_t)f->rules_len,
		.data_len = (uint32_t)f->data_len,
	};
	const struct field fields[] = { { f->user, f->user_len }, { f->rules, f->rules_len },
					{ f->data, f->data_len } };

	if (f->user_len > IPC_AUTH_FIELD_MAX || f->data_len > 2 * IPC_AUTH_DATA_MAX ||
	    f->rules_len > IPC_MAX_PAYLOAD - sizeof(h) - f->user_len - f->data_len)
		return NULL;
	return message_new(&h, sizeof(h), fields, ARRAY_SIZE(fields), len);
}

bool ipc_auth_verdict_decode(const void *data, size_t len, struct ipc_auth_fields *f)
{
	struct ipc_auth_verdict h;
	const char *p = (const char *)data + sizeof(h);

	if (!take_header(&h, sizeof(h), data, len) ||
	    h.user_len > IPC_AUTH_FIELD_MAX || h.rules_len > IPC_MAX_PAYLOAD ||
	    h.data_len > 2 * IPC_AUTH_DATA_MAX ||
	    len != sizeof(h) + (size_t)h.user_len + h.rules_len + h.data_len)
		return false;
	*f = (struct ipc_auth_fields){
		.conn = h.conn, .ticket = h.ticket, .code = h.code,
		.rules_from_token = (h.flags & IPC_AUTH_RULES_FROM_TOKEN) != 0,
		.cont = (h.flags & IPC_AUTH_CONTINUE) != 0,
		.user = p, .user_len = h.user_len,
		.rules = (const uint8_t *)p + h.user_len, .rules_len = h.rules_len,
		.data = (const uint8_t *)p + h.user_len + h.rules_len, .data_len = h.data_len,
	};
	return true;
}
