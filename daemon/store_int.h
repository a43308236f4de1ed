/*
 * store_int.h - what the store's two files share: struct store and the
 * layout constants (the store's format is described in store.c).
 * Private to daemon/store.c and daemon/store_open.c.
 */
#ifndef IOTD_STORE_INT_H
#define IOTD_STORE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <lmdb.h>

#include "rec.h"
#include "store.h"

#define STORE_KEY_PREFIX 400u                      /* keys up to this size are stored as they are */
#define STORE_KEY_LONG (STORE_KEY_PREFIX + 4u)      /* prefix + u32 discriminator */
#define STORE_QKEY_LEN 12u                         /* a queued message's: u64 order, u32 sid */
#define STORE_MAX_DBS 8
#define STORE_LOCK_FILE "iotd.lock"
#define STORE_DIR_PREFIX "iotd-"
#define STORE_NAME_RANDOM 16                      /* bytes of getrandom() in a memory store's name */

/* A queued message's key as numbers: ordered as its bytes are (store.c key_queued). */
struct store_qkey {
	uint64_t order;
	uint32_t sid;
};

struct store {
	MDB_env *env;
	MDB_dbi meta, sessions, subs, queue, retained, outbox;   /* queue: "messages" */
	MDB_txn *txn;                /* this turn's write transaction, begun lazily */
	enum store_kind kind;
	int lock_fd;
	bool stale;                  /* a write failed: mutations are ignored until a resync */
	bool resyncing;              /* the open transaction rewrites everything */
	bool warned;                 /* the failure of this episode was logged */
	bool warned_sync;
	bool unsynced;               /* committed since the last store_sync() */
	uint32_t sessions_max_sid;   /* largest session id written: above it, a put appends */
	struct store_qkey queue_last;  /* largest queue key written: above it, a put appends */
	/* Queued messages deleted this turn, done at the commit (store_queue_flush) */
	uint8_t (*qdel)[STORE_QKEY_LEN];
	size_t n_qdel, cap_qdel;
	struct store_qkey qdel_max;    /* the largest of them */
	struct recw val;             /* scratch for encoding values */
	uint8_t *kbuf;               /* scratch for building long keys (sid + filter) */
	size_t kcap;
	uint8_t key[STORE_KEY_LONG];
	char dir[256];
};

/* A store of format 7 or older: its "queue" (keys sid + order) moved into "messages". */
int store_queue_upgrade(struct store *st, MDB_txn *txn);

static inline MDB_val mval(const void *p, size_t len)
{
	return (MDB_val){ .mv_size = len, .mv_data = (void *)p };
}

/* A session's value as format 7 wrote it, for the tests of reading an older store. */
void store_session_encode7(struct recw *w, const struct store_session *s);

#endif
