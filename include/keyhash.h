/*
 * keyhash.h - the keyed hash of every table indexed by what clients send
 * (client ids, topics, topic levels, filters): SipHash-1-3 under a key
 * drawn at random once per process.
 *
 * With a fixed, public hash function a client could pick client ids or
 * topics that all land in one bucket and make every lookup a walk of a
 * long chain (hash flooding). Under a secret key per process it cannot
 * know which keys collide. Children are forked, so each one draws its own
 * key right after fork (keyhash_init), before it builds any table; a
 * hash is never stored or sent to another process.
 *
 * Include this header instead of <uthash.h>: it points uthash at the keyed
 * hash (HASH_FUNCTION must be defined before uthash.h is read).
 */
#ifndef IOTD_KEYHASH_H
#define IOTD_KEYHASH_H

#include <stddef.h>
#include <stdint.h>

#define KEYHASH_KEY_LEN 16

/*
 * Draw this process's key from getrandom(). Call once at the start of each
 * process that hashes client data, before its first table is built (a
 * table built under one key is unreadable under another).
 */
void keyhash_init(void);
/* Use this key instead (tests: known answers, two keys compared). */
void keyhash_set_key(const uint8_t key[KEYHASH_KEY_LEN]);
/* SipHash-1-3 of data under the process's key. */
uint64_t keyhash(const void *data, size_t len);

#ifdef UTHASH_H
#error "keyhash.h must be included before uthash.h: the tables would use uthash's unkeyed hash"
#endif
#define HASH_FUNCTION(keyptr, keylen, hashv) \
	((hashv) = (unsigned)keyhash((keyptr), (size_t)(keylen)))
#include <uthash.h>

#endif
